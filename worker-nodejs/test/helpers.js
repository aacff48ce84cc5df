'use strict';
// Shared by the app tests: a real worker on a free loopback port, raw-socket exchanges for
// hostile clients (each bounded in time and closing its socket), and small checks.

const assert = require('node:assert/strict');
const net = require('node:net');

const { buildApp } = require('../app');
const { createServer } = require('../transport');
const { loadConfig } = require('../config');
const { createLogger } = require('../log');
const { loadSecrets } = require('../secrets');

/**
 * A worker on a free loopback port, as server.js builds it (HTTPS when `env` names TLS files).
 * Its secret files are re-read only when a test calls `secrets.check()`.
 */
async function startWorker(env = {}, options = {}) {
  const lines = [];
  const logger = createLogger({ level: 'debug', write: (line) => lines.push(line) });
  const config = loadConfig(env);
  const secrets = loadSecrets(config, { logger });
  const app = buildApp(config, { logger, secrets, ...options });
  const server = createServer(app, secrets.tlsOptions());
  secrets.watch((tlsOptions) => server.setSecureContext(tlsOptions), 3_600_000);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `${secrets.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    app,
    lines,
    secrets,
    close: () =>
      new Promise((resolve) => {
        secrets.stop();
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

async function post(worker, body, { query = '', type = 'image/png', headers = {} } = {}) {
  const all = { ...headers };
  if (type) all['content-type'] = type;
  return fetch(`${worker.url}/process${query}`, { method: 'POST', body, headers: all });
}

async function assertError(response, status, code) {
  assert.equal(response.status, status, await response.clone().text());
  assert.match(response.headers.get('content-type'), /^application\/json/);
  const body = await response.json();
  assert.equal(body.error.code, code);
  assert.ok(body.error.message && !body.error.message.includes('\n'));
  if (status === 503) assert.match(response.headers.get('retry-after') || '', /^\d+$/);
  return body;
}

async function waitFor(predicate, what, limitMs = 5000) {
  const deadline = Date.now() + limitMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const health = async (worker) => (await fetch(`${worker.url}/healthz`)).json();
const inflight = async (worker) => (await health(worker)).inflight;

/**
 * A raw connection: `send` writes, `received()` is everything read so far (latin1),
 * `closed` resolves when the server (or we) closed it, `statusLine()` the first line.
 * Destroyed after `limitMs` whatever happens, so a broken server fails rather than hangs.
 */
function rawConnection(worker, { limitMs = 10_000 } = {}) {
  const socket = net.connect(worker.port, '127.0.0.1');
  const chunks = [];
  socket.on('data', (chunk) => chunks.push(chunk));
  socket.on('error', () => {});
  const closed = new Promise((resolve) => socket.on('close', resolve));
  const guard = setTimeout(() => socket.destroy(), limitMs);
  closed.then(() => clearTimeout(guard));
  const received = () => Buffer.concat(chunks).toString('latin1');
  return {
    socket,
    closed,
    send: (data) =>
      new Promise((resolve) => {
        if (socket.destroyed) resolve(false);
        else socket.write(data, (err) => resolve(!err));
      }),
    received,
    receivedBytes: () => chunks.reduce((sum, c) => sum + c.length, 0),
    statusLine: () => received().split('\r\n')[0],
    jsonBody: () => JSON.parse(received().split('\r\n\r\n').slice(1).join('\r\n\r\n')),
    destroy: () => socket.destroy(),
  };
}

/** Sends `request` (a string or Buffer) on a fresh connection; resolves once the server closes it. */
async function exchange(worker, request, options) {
  const connection = rawConnection(worker, options);
  await connection.send(request);
  await connection.closed;
  return connection;
}

function requestHead(worker, { method = 'POST', path = '/process', headers = {} } = {}) {
  const lines = [
    `${method} ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${worker.port}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

module.exports = {
  startWorker,
  post,
  assertError,
  waitFor,
  health,
  inflight,
  rawConnection,
  exchange,
  requestHead,
};
