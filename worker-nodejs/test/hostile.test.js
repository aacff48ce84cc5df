'use strict';
// Hostile clients on raw sockets against a real server on a loopback port (issue 11): bodies
// pushed without a token, replies never read, memory admission by pixels, a stuck
// self-check, slow headers. Every connection is bounded in time and closed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const tls = require('node:tls');

const { encodeImage } = require('../encode');
const { rle8Bmp } = require('./bmp');
const { startWorker, post, assertError, waitFor, health, rawConnection, requestHead } = require('./helpers');
const { capIdleConnections } = require('../transport');
const { tempFolder, authority } = require('./certs');

/** A flat PNG: tiny on the wire, `width*height` pixels once decoded. */
const flatPng = (width, height) =>
  encodeImage({ width, height, data: Buffer.alloc(width * height * 3, 77) }, 'png', { compression: 9 });

/** POSTs `body` on a raw connection and never reads the reply (the kernel buffers some). */
async function postUnread(worker, body, query) {
  const connection = rawConnection(worker, { limitMs: 20_000 });
  connection.socket.pause();
  await connection.send(
    requestHead(worker, {
      path: `/process${query}`,
      headers: { 'Content-Type': 'image/png', 'Content-Length': body.length },
    }),
  );
  await connection.send(body);
  return connection;
}

test('issue 11 item 6 / rule 3: a refused upload is answered at once and closed after at most 64 KiB or 1 s', async () => {
  const worker = await startWorker({ WORKER_TOKEN: 'tok' });
  try {
    const connection = rawConnection(worker, { limitMs: 15_000 });
    await connection.send(
      requestHead(worker, { headers: { 'Content-Type': 'image/png', 'Content-Length': 1_000_000_000 } }),
    );
    const chunk = Buffer.alloc(64 * 1024, 1);
    let pushed = 0;
    const started = Date.now();
    // Push as fast as the server takes it, for at most 8 s; the old worker read it all.
    while (Date.now() - started < 8000 && !connection.socket.destroyed && !connection.socket.writableEnded) {
      if (!(await connection.send(chunk))) break;
      pushed += chunk.length;
    }
    await Promise.race([connection.closed, new Promise((resolve) => setTimeout(resolve, 3000))]);
    assert.ok(connection.socket.destroyed, 'the server closed the connection');
    assert.match(connection.statusLine(), /^HTTP\/1\.1 401 /);
    assert.match(connection.received(), /\r\nConnection: close\r\n/i);
    assert.ok(Date.now() - started < 5000, `closed after ${Date.now() - started} ms`);
    assert.ok(pushed < 64 * 1024 * 1024, `the server took ${pushed} bytes`);
  } finally {
    await worker.close();
  }
});

test('rule 3: 404, 405, 415 and busy are answered with Connection: close before the body arrives', async () => {
  const worker = await startWorker({ WORKER_MAX_INFLIGHT: '1' });
  try {
    const cases = [
      [{ path: '/nope' }, 404],
      [{ method: 'PUT' }, 405],
      [{ headers: { 'Content-Type': 'text/plain' } }, 415],
      [{ path: '/process?op=sharpen' }, 400],
    ];
    for (const [head, status] of cases) {
      const connection = rawConnection(worker);
      const headers = { 'Content-Type': 'image/png', ...head.headers, 'Content-Length': 10_000_000 };
      await connection.send(requestHead(worker, { ...head, headers }));
      await connection.closed; // without a byte of the body
      assert.match(connection.statusLine(), new RegExp(`^HTTP/1\\.1 ${status} `));
      assert.match(connection.received(), /\r\nConnection: close\r\n/i);
    }
  } finally {
    await worker.close();
  }
});

test('issue 11 item 4 / rule 9: a reply never read keeps its slot and pixels until the rate bound cuts it off', async () => {
  const worker = await startWorker(
    { WORKER_MAX_INFLIGHT_PIXELS: '10000000' },
    {
      replyPacing: { allowanceMs: 500, minBytesPerSecond: 4 * 1024 * 1024 },
    },
  );
  try {
    const big = await flatPng(3000, 3000); // a 27 MB raw reply, far more than socket buffers
    const stuck = await postUnread(worker, big, '?op=invert&format=raw');
    await waitFor(async () => (await health(worker)).inflight_pixels === 9_000_000, 'the request to claim its pixels');
    const during = await health(worker);
    assert.equal(during.inflight, 1, 'the slot is held while the reply is unread');
    assert.equal(during.max_inflight_pixels, 10_000_000);
    // a second request that would pass the pixel budget is busy, with Retry-After
    await assertError(await post(worker, await flatPng(1200, 1000)), 503, 'busy');
    // the unread reply is cut off by the rate bound, and slot and pixels come back
    await waitFor(async () => (await health(worker)).inflight === 0, 'the slow reader to be cut off', 15_000);
    assert.equal((await health(worker)).inflight_pixels, 0);
    stuck.destroy(); // paused, it has not even seen the close yet
  } finally {
    await worker.close();
  }
});

test('rule 9: a lone request over the pixel budget is admitted', async () => {
  const worker = await startWorker({ WORKER_MAX_INFLIGHT_PIXELS: '100' });
  try {
    const response = await post(worker, await flatPng(30, 30), { query: '?op=invert' });
    assert.equal(response.status, 200);
  } finally {
    await worker.close();
  }
});

test('issue 11 item 3 / rule 10: /healthz never waits for the self-check, and a stuck one is reported', async () => {
  let clock = 0;
  const worker = await startWorker({}, { now: () => clock, selfCheck: () => new Promise(() => {}) });
  try {
    const started = Date.now();
    const first = await fetch(`${worker.url}/healthz`, { signal: AbortSignal.timeout(3000) });
    assert.equal(first.status, 200);
    assert.ok(Date.now() - started < 1000);
    clock = 31_000;
    const stuck = await fetch(`${worker.url}/healthz`, { signal: AbortSignal.timeout(3000) });
    assert.equal(stuck.status, 503);
    assert.match((await stuck.json()).reason, /has not finished/);
  } finally {
    await worker.close();
  }
});

test('rule 10: a connection that does not finish its headers within 5 s is closed', async () => {
  const worker = await startWorker();
  try {
    const connection = rawConnection(worker, { limitMs: 15_000 });
    await connection.send('POST /process HTTP/1.1\r\nHost: x\r\n');
    const started = Date.now();
    const timer = setInterval(() => connection.send('X-Drip: 1\r\n'), 500);
    await connection.closed;
    clearInterval(timer);
    const took = Date.now() - started;
    assert.ok(took > 3000 && took < 12_000, `closed after ${took} ms`);
  } finally {
    await worker.close();
  }
});

test('rule 10: a silent connection and an idle keep-alive connection are both closed after about 5 s', async () => {
  const worker = await startWorker();
  try {
    const silent = rawConnection(worker, { limitMs: 15_000 });
    const kept = rawConnection(worker, { limitMs: 15_000 });
    await kept.send(requestHead(worker, { method: 'GET', path: '/healthz' }));
    const started = Date.now();
    const closedAfter = async (connection) => {
      await connection.closed;
      return Date.now() - started;
    };
    const [silentMs, keptMs] = await Promise.all([closedAfter(silent), closedAfter(kept)]);
    assert.match(kept.statusLine(), /^HTTP\/1\.1 200 /);
    for (const ms of [silentMs, keptMs]) assert.ok(ms > 3000 && ms < 12_000, `closed after ${ms} ms`);
  } finally {
    await worker.close();
  }
});

/** A complete RLE8 BMP of runs of 250 pixels: ~8 bytes per 1000 pixels on the wire. */
function rle8Runs(width, height) {
  const palette = Buffer.alloc(256 * 4);
  for (let i = 0; i < 256; i += 1) palette.set([i, 255 - i, (i * 7) & 255, 0], i * 4);
  const codes = [];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 250) codes.push(Math.min(250, width - x), (x + y) & 255);
    codes.push(0, 0);
  }
  codes.push(0, 1);
  return rle8Bmp(width, height, palette, codes);
}

/** Probes /healthz every 50 ms until `stop()`; resolves the worst latency in ms. */
function probeHealth(worker) {
  let running = true;
  const done = (async () => {
    let worst = 0;
    while (running) {
      const started = Date.now();
      await fetch(`${worker.url}/healthz`, { signal: AbortSignal.timeout(20_000) });
      worst = Math.max(worst, Date.now() - started);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return worst;
  })();
  return () => {
    running = false;
    return done;
  };
}

test('issue 11 item 5 / rule 10: /healthz stays under 1 s while 4 heavy BMP + sepia requests run', async () => {
  const worker = await startWorker();
  try {
    const bmp = rle8Runs(4000, 3000); // the old worker held the event loop ~1 s per request
    const stop = probeHealth(worker);
    const replies = await Promise.all(
      [0, 1, 2, 3].map(async () => {
        const response = await post(worker, bmp, { type: 'image/bmp', query: '?op=sepia&format=raw' });
        return [response.status, (await response.arrayBuffer()).byteLength];
      }),
    );
    const worst = await stop();
    assert.deepEqual(replies, Array(4).fill([200, 4000 * 3000 * 3 + 'P6\n4000 3000\n255\n'.length]));
    assert.ok(worst < 1000, `worst /healthz latency ${worst} ms`);
  } finally {
    await worker.close();
  }
});

test('issue 11 item 3: a client that leaves mid-blur stops the work and frees its slot', async () => {
  const worker = await startWorker();
  try {
    const ppm = Buffer.concat([Buffer.from('P6\n3000 2000\n255\n'), Buffer.alloc(3000 * 2000 * 3, 9)]);
    const connection = rawConnection(worker);
    await connection.send(
      requestHead(worker, {
        path: '/process?op=blur&radius=50&format=raw',
        headers: { 'Content-Type': 'image/x-portable-pixmap', 'Content-Length': ppm.length },
      }),
    );
    await connection.send(ppm);
    await waitFor(async () => (await health(worker)).inflight_pixels > 0, 'the blur to start');
    connection.destroy();
    await waitFor(async () => (await health(worker)).inflight === 0, 'the slot to come back', 3000);
    // The old worker kept blurring for seconds after the client left; now the CPU goes quiet.
    const before = process.cpuUsage();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const spent = process.cpuUsage(before);
    assert.ok(
      spent.user + spent.system < 400_000,
      `${(spent.user + spent.system) / 1000} ms of CPU after the client left`,
    );
  } finally {
    await worker.close();
  }
});

/**
 * Connections to `server` (a capped one: capIdleConnections(server, 3)) in the order the cap
 * must evict them: busy ones are kept, a kept-alive one counts as idle from its reply on.
 */
async function assertOldestIdleEvicted(server, connect) {
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  server.on('request', (req, res) => (req.url === '/hold' ? held : Promise.resolve()).then(() => res.end('ok')));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const open = async (request) => {
    const socket = await connect(server.address().port);
    // a reply within 5 s, or the test fails there (a connection evicted by mistake never gets one)
    const replied = () =>
      new Promise((resolve, reject) => {
        socket.once('data', resolve);
        setTimeout(() => reject(new Error(`no reply to ${request}`)), 5_000).unref();
      });
    const closed = new Promise((resolve) => socket.once('close', () => resolve(true)));
    socket.on('error', () => {});
    if (request) socket.write(`GET ${request} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const isClosed = () => Promise.race([closed, new Promise((resolve) => setTimeout(() => resolve(false), 300))]);
    return { socket, replied, isClosed };
  };
  const sockets = [];
  try {
    const busy = await open('/hold');
    const silent = await open(null);
    const kept = await open('/');
    await kept.replied(); // idle again, newer than `silent`
    const late = await open(null);
    sockets.push(busy, silent, kept, late);
    assert.equal(await silent.isClosed(), false, 'closed at the cap, before any connection past it');
    sockets.push(await open(null));
    assert.equal(await silent.isClosed(), true, 'the oldest idle connection was kept');
    sockets.push(await open(null));
    assert.equal(await kept.isClosed(), true, 'the kept-alive connection was kept');
    release();
    await busy.replied(); // idle from now on: the newest
    sockets.push(await open(null));
    assert.equal(await late.isClosed(), true, 'the next oldest idle connection was kept');
    assert.equal(await busy.isClosed(), false, 'a connection that was busy was evicted before older idle ones');
  } finally {
    release();
    for (const { socket } of sockets) socket.destroy();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

test(
  'rule 10: past MAX_IDLE_CONNECTIONS a new connection closes the one idle longest, never a busy one',
  { timeout: 20_000 },
  async () => {
    const server = http.createServer();
    capIdleConnections(server, 3);
    await assertOldestIdleEvicted(
      server,
      (port) =>
        new Promise((resolve) =>
          net.connect(port, '127.0.0.1').once('connect', function connected() {
            resolve(this);
          }),
        ),
    );
  },
);

test('rule 10: the idle cap counts TLS connections by their accepted socket', { timeout: 20_000 }, async () => {
  const { folder, cleanup } = tempFolder();
  try {
    const { cert, key } = authority(folder).issue('server');
    const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
    capIdleConnections(server, 3);
    await assertOldestIdleEvicted(
      server,
      (port) =>
        new Promise((resolve) => {
          const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => resolve(socket));
        }),
    );
  } finally {
    cleanup();
  }
});
