'use strict';
// The worker's HTTPS port, over real loopback connections: /healthz says tls, TLS 1.2 is the
// floor, mutual TLS refuses a client without the CA's certificate at the handshake, new
// certificates and tokens apply to new connections while open ones go on, a peer that never
// finishes its handshake (or speaks plain HTTP) is cut off and does not delay /healthz.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const https = require('node:https');
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { createServer } = require('../transport');
const { startWorker, waitFor } = require('./helpers');
const { FLEET_TLS_NAME, tempFolder, authority } = require('./certs');

/** A request over TLS verified against `ca` for the fleet's name; resolves {status, json, reused}. */
function tlsRequest(
  worker,
  { ca, client, agent = false, method = 'GET', path: urlPath = '/healthz', headers = {}, body, ...tlsExtra },
) {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: worker.port,
        method,
        path: urlPath,
        headers,
        agent,
        servername: FLEET_TLS_NAME,
        ca: fs.readFileSync(ca),
        ...(client ? { cert: fs.readFileSync(client.cert), key: fs.readFileSync(client.key) } : {}),
        timeout: 10_000,
        ...tlsExtra,
      },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode, json: text ? JSON.parse(text) : null, reused: req.reusedSocket });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

/** A CA, its server pair and client pair, a second CA with its own pair, in a temp folder. */
function materials(t) {
  const { folder, cleanup } = tempFolder();
  t.after(cleanup);
  const ca = authority(folder, 'ca');
  const next = authority(folder, 'next-ca');
  return {
    folder,
    ca,
    server: ca.issue('server'),
    client: ca.issue('client', { name: 'coordinator', client: true }),
    next,
    nextServer: next.issue('next-server'),
    nextClient: next.issue('next-client', { name: 'coordinator', client: true }),
  };
}

async function tlsWorker(t, m, extra = {}) {
  const worker = await startWorker({ WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.server.key, ...extra });
  t.after(() => worker.close());
  return worker;
}

test('over TLS /healthz says tls true; without TLS files it says tls false', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m);
  assert.match(worker.url, /^https:/);
  const reply = await tlsRequest(worker, { ca: m.ca.cert });
  assert.equal(reply.status, 200);
  assert.equal(reply.json.tls, true);
  const plain = await startWorker({});
  t.after(() => plain.close());
  assert.equal((await (await fetch(`${plain.url}/healthz`)).json()).tls, false);
});

test('TLS 1.2 is the floor: a 1.2 client is served, a TLS 1.1 client gets a protocol alert', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m);
  assert.equal((await tlsRequest(worker, { ca: m.ca.cert, maxVersion: 'TLSv1.2' })).status, 200);
  const old = tlsRequest(worker, {
    ca: m.ca.cert,
    minVersion: 'TLSv1',
    maxVersion: 'TLSv1.1',
    ciphers: 'DEFAULT@SECLEVEL=0',
  });
  await assert.rejects(old, (err) => /protocol.version|unsupported.protocol/i.test(`${err.code} ${err.message}`));
});

test('mutual TLS: no client certificate, or one from another CA, is refused at the handshake', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m, { WORKER_TLS_CLIENT_CA: m.ca.cert });
  assert.equal((await tlsRequest(worker, { ca: m.ca.cert, client: m.client })).status, 200);
  for (const client of [undefined, m.nextClient]) {
    // TLS 1.3 reports the refusal after the client's handshake ends: an alert or a reset.
    await assert.rejects(tlsRequest(worker, { ca: m.ca.cert, client }), (err) =>
      /CERTIFICATE_REQUIRED|UNKNOWN_CA|ECONNRESET/.test(err.code),
    );
  }
});

test('a new certificate applies to new connections; an open keep-alive connection goes on', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m);
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  assert.equal((await tlsRequest(worker, { ca: m.ca.cert, agent })).status, 200);
  fs.copyFileSync(m.nextServer.cert, m.server.cert);
  fs.copyFileSync(m.nextServer.key, m.server.key);
  worker.secrets.check();
  const again = await tlsRequest(worker, { ca: m.ca.cert, agent });
  assert.deepEqual([again.status, again.reused], [200, true]);
  await assert.rejects(tlsRequest(worker, { ca: m.ca.cert }), /self.signed|unable to verify|certificate/i);
  assert.equal((await tlsRequest(worker, { ca: m.next.cert })).status, 200);
});

test('a broken certificate file keeps the previous one and logs one error line', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m);
  fs.writeFileSync(m.server.cert, '-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n');
  worker.secrets.check();
  assert.equal((await tlsRequest(worker, { ca: m.ca.cert })).status, 200);
  const errors = worker.lines.map((line) => JSON.parse(line)).filter((line) => line.level === 'error');
  assert.equal(errors.length, 1);
  assert.match(
    errors[0].msg,
    /^secrets reload failed: WORKER_TLS_CERT: not a PEM certificate; keeping the previous ones$/,
  );
});

test('a rotated token file: both tokens during the rotation, then only the new one', async (t) => {
  const { folder, cleanup } = tempFolder();
  t.after(cleanup);
  const tokenFile = path.join(folder, 'worker-token');
  fs.writeFileSync(tokenFile, 'current-token\n');
  const worker = await startWorker({ WORKER_TOKEN_FILE: tokenFile });
  t.after(() => worker.close());
  const statusWith = async (token) =>
    (
      await fetch(`${worker.url}/process`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'image/png' },
      })
    ).status;
  // 400 missing_image: past the token check; 401: refused by it.
  assert.deepEqual([await statusWith('current-token'), await statusWith('next-token')], [400, 401]);
  fs.writeFileSync(tokenFile, 'current-token\nnext-token\n');
  worker.secrets.check();
  assert.deepEqual([await statusWith('current-token'), await statusWith('next-token')], [400, 400]);
  fs.writeFileSync(tokenFile, 'next-token\n');
  worker.secrets.check();
  assert.deepEqual([await statusWith('current-token'), await statusWith('next-token')], [401, 400]);
});

test('a refusal over TLS is answered before the body is read, and the client can read it', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m, { WORKER_TOKEN: 'right' });
  const body = Buffer.alloc(4 * 1024 * 1024);
  const headers = { authorization: 'Bearer wrong', 'content-type': 'image/png', 'content-length': String(body.length) };
  const reply = await tlsRequest(worker, { ca: m.ca.cert, method: 'POST', path: '/process', headers, body }).catch(
    (err) => err,
  );
  // Like over plain HTTP (rule 3): the 401, or at worst a reset once the 64 KiB linger is spent.
  if (reply instanceof Error) assert.match(reply.code, /ECONNRESET|EPIPE/);
  else assert.deepEqual([reply.status, reply.json.error.code], [401, 'unauthorized']);
});

function rawPeer(port, send) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  const started = Date.now();
  const closed = new Promise((resolve) => socket.on('close', () => resolve(Date.now() - started)));
  const guard = setTimeout(() => socket.destroy(), 15_000);
  closed.then(() => clearTimeout(guard));
  if (send) socket.write(send);
  return { socket, closed };
}

test('silent, half-handshake and plain-HTTP peers are cut off; /healthz stays fast meanwhile', async (t) => {
  const m = materials(t);
  const worker = await tlsWorker(t, m);
  const idle = Array.from({ length: 20 }, () => rawPeer(worker.port));
  const partial = rawPeer(worker.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
  const plain = rawPeer(worker.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.ok((await plain.closed) < 2_000, 'plain HTTP on the TLS port is dropped at once');
  const started = Date.now();
  assert.equal((await tlsRequest(worker, { ca: m.ca.cert })).status, 200);
  assert.ok(Date.now() - started < 1_000, '/healthz waited behind unfinished handshakes');
  // The handshake bound is the header timeout (5 s); generous for a loaded machine.
  for (const peer of [...idle, partial]) assert.ok((await peer.closed) < 9_000);
});

test('server.js over TLS picks up a changed token file by itself within seconds', async (t) => {
  const m = materials(t);
  const tokenFile = path.join(m.folder, 'worker-token');
  fs.writeFileSync(tokenFile, 'current-token\n');
  const env = { WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.server.key, WORKER_TOKEN_FILE: tokenFile };
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'server.js')], {
    env: { ...process.env, WORKER_HOST: '127.0.0.1', WORKER_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (chunk) => {
    output += chunk;
  });
  await waitFor(() => /"msg":"listening"/.test(output), 'listening', 15_000);
  assert.match(output, /"tls":true/);
  const worker = { port: Number(/"port":(\d+)/.exec(output)[1]) };
  const statusWith = async (token) =>
    (
      await tlsRequest(worker, {
        ca: m.ca.cert,
        method: 'POST',
        path: '/process',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'image/png' },
      })
    ).status;
  assert.equal(await statusWith('next-token'), 401);
  fs.writeFileSync(tokenFile, 'current-token\nnext-token\n');
  await waitFor(async () => (await statusWith('next-token')) === 400, 'the new token', 8_000);
  assert.match(output, /"msg":"secrets reloaded"/);
});

test('a failed TLS handshake (forwarded as a clientError) gets no HTTP answer, just a close', () => {
  const server = createServer(() => {});
  for (const err of [
    Object.assign(new Error('timed out'), { code: 'ERR_TLS_HANDSHAKE_TIMEOUT' }),
    Object.assign(new Error('http request'), { code: 'ERR_SSL_HTTP_REQUEST', library: 'SSL routines' }),
  ]) {
    const socket = { writable: true, written: [], destroyed: false };
    socket.end = (data) => socket.written.push(data);
    socket.destroy = () => {
      socket.destroyed = true;
    };
    server.emit('clientError', err, socket);
    // Before: a plain-text 400 was written into the TLS stream and the close waited 1 s more.
    assert.deepEqual([socket.written, socket.destroyed], [[], true], err.code);
  }
});
