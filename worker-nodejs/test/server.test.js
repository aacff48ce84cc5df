'use strict';
// server.js as a real process: SIGTERM drains and exits 0; a stuck request is cut off after
// WORKER_GRACE_SECONDS with a non-zero exit.

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');

function startServer(env) {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'server.js')], {
    env: { ...process.env, WORKER_HOST: '127.0.0.1', WORKER_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk;
      const match = /"msg":"listening".*?"port":(\d+)/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    exited.then((code) => reject(new Error(`server exited ${code} before listening: ${output}`)));
  });
  return { child, exited, listening, output: () => output };
}

async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('SIGTERM with nothing in flight exits 0', async () => {
  const server = startServer({});
  const port = await withTimeout(server.listening, 15_000, 'listening');
  assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
  server.child.kill('SIGTERM');
  assert.equal(await withTimeout(server.exited, 15_000, 'exit'), 0);
  assert.match(server.output(), /"msg":"stopped"/);
});

test('a request still in flight after the grace period forces a non-zero exit', async () => {
  const server = startServer({ WORKER_GRACE_SECONDS: '0.3' });
  const port = await withTimeout(server.listening, 15_000, 'listening');
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write('POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\nabc');
  const deadline = Date.now() + 5000;
  while ((await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()).inflight !== 1) {
    assert.ok(Date.now() < deadline, 'the held request never took its slot');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  server.child.kill('SIGTERM');
  assert.equal(await withTimeout(server.exited, 15_000, 'exit'), 1);
  assert.match(server.output(), /grace period over/);
  socket.destroy();
});

test(
  'the libuv pool has room beyond WORKER_MAX_INFLIGHT, so the self-check never queues behind requests',
  {
    skip: process.platform !== 'linux' && 'counts threads in /proc',
  },
  async () => {
    const threads = async (maxInflight) => {
      const server = startServer({ WORKER_MAX_INFLIGHT: String(maxInflight) });
      const port = await withTimeout(server.listening, 15_000, 'listening');
      await fetch(`http://127.0.0.1:${port}/healthz`);
      const count = require('node:fs').readdirSync(`/proc/${server.child.pid}/task`).length;
      server.child.kill('SIGTERM');
      await withTimeout(server.exited, 15_000, 'exit');
      return count;
    };
    // max(4, inflight + 2) pool threads: 4 for 2 in flight, 12 for 10 in flight
    assert.equal((await threads(10)) - (await threads(2)), 8);
  },
);

test('large requests start no incremental marking (V8 answers their Buffers with a scavenge)', async () => {
  // server.js turns incremental marking off: with prom-client's heap it ran an extra
  // mark-compact per strip's "external memory pressure" (~30 ms CPU per 6 MP strip).
  const child = spawn(process.execPath, ['--trace-gc', path.join(__dirname, '..', 'server.js')], {
    env: { ...process.env, WORKER_HOST: '127.0.0.1', WORKER_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => {
    output += chunk;
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const deadline = Date.now() + 15_000;
  let port = null;
  while (port === null) {
    assert.ok(Date.now() < deadline, `never listened: ${output.slice(-500)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const match = /"msg":"listening".*?"port":(\d+)/.exec(output);
    port = match ? Number(match[1]) : null;
  }
  const [width, height] = [3000, 2000];
  const body = Buffer.concat([Buffer.from(`P6\n${width} ${height}\n255\n`), Buffer.alloc(width * height * 3, 7)]);
  for (let i = 0; i < 3; i += 1) {
    const reply = await fetch(`http://127.0.0.1:${port}/process?op=grayscale`, {
      method: 'POST',
      headers: { 'Content-Type': 'image/x-portable-pixmap' },
      body,
    });
    assert.equal(reply.status, 200);
    await reply.arrayBuffer();
  }
  child.kill('SIGTERM');
  await withTimeout(exited, 15_000, 'exit');
  assert.match(output, /Mark-Compact/, 'the GC trace shows the full GC after each large request');
  assert.doesNotMatch(output, /incremental marking/);
});
