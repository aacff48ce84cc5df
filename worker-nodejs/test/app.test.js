'use strict';
// app.js through a real listening server on a free loopback port.

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const { decodeImage } = require('../decode');
const { invertInPlace, sepiaInPlace } = require('../ops');
const { encodeImage } = require('../encode');
const { startWorker, post, assertError, waitFor, inflight } = require('./helpers');

const PIXELS = Buffer.from([200, 100, 50, 0, 0, 0, 255, 255, 255, 10, 20, 30, 1, 22, 1, 90, 90, 90]);
let pngPromise;
const smallPng = () => (pngPromise ??= encodeImage({ width: 3, height: 2, data: Buffer.from(PIXELS) }, 'png'));

/** A /process request whose body is only partly sent, so it holds its in-flight slot. */
function holdRequest(worker, body, headers = {}) {
  const socket = net.connect(worker.port, '127.0.0.1');
  const head = [
    'POST /process?op=invert HTTP/1.1',
    `Host: 127.0.0.1:${worker.port}`,
    'Content-Type: image/png',
    `Content-Length: ${body.length}`,
    'Connection: close',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ].join('\r\n');
  socket.write(`${head}\r\n\r\n`);
  socket.write(body.subarray(0, 10));
  let received = '';
  socket.on('data', (chunk) => {
    received += chunk.toString('latin1');
  });
  const ended = new Promise((resolve) => socket.on('close', resolve));
  return {
    finish: async () => {
      socket.write(body.subarray(10));
      await ended;
      return received;
    },
    drop: () => socket.destroy(),
  };
}

test('healthz reports capabilities, limits, version and build', async () => {
  const worker = await startWorker({ WORKER_BUILD: 'abc123', WORKER_MAX_INFLIGHT: '3' });
  try {
    const response = await fetch(`${worker.url}/healthz`);
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.status, 'ok');
    assert.equal(body.service, 'worker-nodejs');
    assert.equal(body.runtime, 'nodejs');
    assert.equal(body.version, require('../package.json').version);
    assert.equal(body.build, 'abc123');
    assert.equal(body.primary, 'sepia');
    assert.deepEqual(body.operations, ['grayscale', 'sepia', 'invert', 'blur']);
    assert.deepEqual(body.formats, ['png', 'jpeg', 'webp', 'raw']);
    assert.equal(body.max_inflight, 3);
    assert.equal(body.inflight, 0);
  } finally {
    await worker.close();
  }
});

test('healthz is 503 when the self-check fails, and the check is cached for 10 s', async () => {
  let clock = 0;
  let calls = 0;
  let reason = 'decoder broke';
  const worker = await startWorker(
    {},
    {
      now: () => clock,
      selfCheck: async () => {
        calls += 1;
        return reason;
      },
    },
  );
  const healthz = () => fetch(`${worker.url}/healthz`);
  try {
    // The check runs in the background from start-up; /healthz reports its last result.
    await waitFor(async () => (await healthz()).status === 503, 'the first check to fail');
    const body = await (await healthz()).json();
    assert.equal(body.status, 'unhealthy');
    assert.equal(body.reason, 'decoder broke');
    reason = null;
    clock = 9_999;
    assert.equal((await healthz()).status, 503, 'still the cached result');
    assert.equal(calls, 1);
    clock = 10_000;
    await waitFor(async () => (await healthz()).status === 200, 're-checked after 10 s');
    assert.equal(calls, 2);
  } finally {
    await worker.close();
  }
});

test('a self-check that throws makes healthz 503, not 500', async () => {
  const worker = await startWorker(
    {},
    {
      selfCheck: async () => {
        throw new Error('libvips gone');
      },
    },
  );
  try {
    await waitFor(async () => (await fetch(`${worker.url}/healthz`)).status === 503, 'the check to fail');
    const response = await fetch(`${worker.url}/healthz`);
    assert.match((await response.json()).reason, /libvips gone/);
  } finally {
    await worker.close();
  }
});

test('unknown routes are JSON 404, wrong methods JSON 405', async () => {
  const worker = await startWorker();
  try {
    await assertError(await fetch(`${worker.url}/nope`), 404, 'not_found');
    const wrong = await fetch(`${worker.url}/process`);
    assert.equal(wrong.headers.get('allow'), 'POST');
    await assertError(wrong, 405, 'method_not_allowed');
    await assertError(await fetch(`${worker.url}/healthz`, { method: 'POST' }), 405, 'method_not_allowed');
  } finally {
    await worker.close();
  }
});

test('the original multipart request: field image, no op -> sepia PNG', async () => {
  const worker = await startWorker();
  try {
    const form = new FormData();
    form.append('note', 'ignored');
    form.append('image', new Blob([await smallPng()], { type: 'image/png' }), 'strip.png');
    const response = await fetch(`${worker.url}/process`, { method: 'POST', body: form });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'image/png');
    assert.equal(response.headers.get('x-worker'), 'worker-nodejs');
    assert.ok(Number(response.headers.get('x-processing-ms')) >= 0);
    const out = await decodeImage(Buffer.from(await response.arrayBuffer()), { maxPixels: 6 });
    assert.deepEqual(out.data, sepiaInPlace(Buffer.from(PIXELS)));
  } finally {
    await worker.close();
  }
});

test('format: ?format= wins over Accept; Accept picks the first known type; PNG otherwise', async () => {
  const worker = await startWorker();
  try {
    const png = await smallPng();
    const cases = [
      ['?op=invert&format=raw', { accept: 'image/webp' }, 'image/x-portable-pixmap'],
      ['?op=invert', { accept: 'text/html, image/webp, image/png' }, 'image/webp'],
      ['?op=invert', { accept: 'image/jpeg;q=0, image/png' }, 'image/png'],
      ['?op=invert', { accept: '*/*' }, 'image/png'],
    ];
    for (const [query, headers, type] of cases) {
      const response = await post(worker, png, { query, headers });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('content-type'), type, `${query} ${headers.accept}`);
    }
    const raw = Buffer.from(await (await post(worker, png, { query: '?op=invert&format=raw' })).arrayBuffer());
    assert.equal(raw.toString('latin1', 0, 11), 'P6\n3 2\n255\n');
    assert.deepEqual(raw.subarray(11), invertInPlace(Buffer.from(PIXELS)));
  } finally {
    await worker.close();
  }
});

test('400s and 415s: types, ops, parameters, missing image', async () => {
  const worker = await startWorker();
  try {
    const png = await smallPng();
    await assertError(await post(worker, png, { type: null }), 415, 'unsupported_type');
    await assertError(await post(worker, png, { type: 'application/octet-stream' }), 415, 'unsupported_type');
    await assertError(await post(worker, png, { query: '?op=sharpen' }), 400, 'unknown_op');
    await assertError(await post(worker, png, { query: '?op=' }), 400, 'unknown_op');
    for (const query of [
      '?format=gif',
      '?quality=0',
      '?quality=9.5',
      '?compression=10',
      '?lossless=yes',
      '?op=blur&radius=0',
      '?op=blur&radius=51',
      '?op=blur&radius=NaN',
      '?quality=1&quality=2',
    ]) {
      await assertError(await post(worker, png, { query }), 400, 'bad_param');
    }
    await assertError(await post(worker, Buffer.alloc(0)), 400, 'missing_image');
    const form = new FormData();
    form.append('picture', new Blob([png]), 'strip.png');
    await assertError(await fetch(`${worker.url}/process`, { method: 'POST', body: form }), 400, 'missing_image');
    await assertError(await post(worker, Buffer.from('not a picture at all')), 400, 'bad_image');
    const good = await post(worker, png, {
      query: '?op=blur&radius=50&quality=100&compression=0&lossless=false&other=1',
    });
    assert.equal(good.status, 200);
  } finally {
    await worker.close();
  }
});

test('bearer token: missing or wrong is 401, right is 200, and the token never reaches the log', async () => {
  const token = 'sekrit-token-value';
  const worker = await startWorker({ WORKER_TOKEN: token });
  try {
    const png = await smallPng();
    await assertError(await post(worker, png), 401, 'unauthorized');
    for (const value of [`Bearer ${token}x`, 'Bearer ', token, `Basic ${token}`, 'Bearer short']) {
      await assertError(await post(worker, png, { headers: { authorization: value } }), 401, 'unauthorized');
    }
    assert.equal((await post(worker, png, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    assert.equal((await fetch(`${worker.url}/healthz`)).status, 200, 'healthz needs no token');
    assert.ok(!worker.lines.join('').includes(token));
  } finally {
    await worker.close();
  }
});

test('busy: the slot is taken when headers arrive and freed when the response is done', async () => {
  const worker = await startWorker({ WORKER_MAX_INFLIGHT: '1' });
  try {
    const png = await smallPng();
    const held = holdRequest(worker, png);
    await waitFor(async () => (await inflight(worker)) === 1, 'the held request to take its slot');
    await assertError(await post(worker, png), 503, 'busy');
    await assertError(await post(worker, Buffer.alloc(100), { type: 'text/plain' }), 503, 'busy');
    const reply = await held.finish();
    assert.match(reply, /^HTTP\/1\.1 200 /);
    await waitFor(async () => (await inflight(worker)) === 0, 'the slot to be freed');
    assert.equal((await post(worker, png)).status, 200);
  } finally {
    await worker.close();
  }
});

test('a client that hangs up mid-body frees its slot', async () => {
  const worker = await startWorker({ WORKER_MAX_INFLIGHT: '1' });
  try {
    const held = holdRequest(worker, await smallPng());
    await waitFor(async () => (await inflight(worker)) === 1, 'the held request to take its slot');
    held.drop();
    await waitFor(async () => (await inflight(worker)) === 0, 'the slot to be freed');
  } finally {
    await worker.close();
  }
});

test('too large: by Content-Length before reading, and counted on a chunked body', async () => {
  const worker = await startWorker({ WORKER_MAX_BYTES: '1000' });
  try {
    await assertError(await post(worker, Buffer.alloc(1001)), 413, 'too_large');
    const chunks = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 5; i += 1) controller.enqueue(new Uint8Array(400));
        controller.close();
      },
    });
    const response = await fetch(`${worker.url}/process`, {
      method: 'POST',
      body: chunks,
      duplex: 'half',
      headers: { 'content-type': 'image/png' },
    });
    await assertError(response, 413, 'too_large');
    // 413 comes before 415 and 400
    await assertError(
      await post(worker, Buffer.alloc(5000), { type: 'text/plain', query: '?op=bogus' }),
      413,
      'too_large',
    );
  } finally {
    await worker.close();
  }
});

test('pixel limit from the header is 413 too_many_pixels', async () => {
  const worker = await startWorker({ WORKER_MAX_PIXELS: '5' });
  try {
    await assertError(await post(worker, await smallPng()), 413, 'too_many_pixels');
  } finally {
    await worker.close();
  }
});

test('draining: healthz 503, new work 503 draining (before 401), whenIdle waits for in-flight work', async () => {
  const worker = await startWorker({ WORKER_TOKEN: 'tok', WORKER_MAX_INFLIGHT: '2' });
  try {
    const png = await smallPng();
    const held = holdRequest(worker, png, { Authorization: 'Bearer tok' });
    await waitFor(async () => (await inflight(worker)) === 1, 'the held request to take its slot');
    const state = worker.app.locals.worker;
    state.startDraining();
    let idle = false;
    const idlePromise = state.whenIdle().then(() => {
      idle = true;
    });
    const health = await fetch(`${worker.url}/healthz`);
    assert.equal(health.status, 503);
    assert.equal((await health.json()).status, 'draining');
    await assertError(await post(worker, png), 503, 'draining');
    assert.equal(idle, false);
    assert.match(await held.finish(), /^HTTP\/1\.1 200 /);
    await idlePromise;
    assert.equal(idle, true);
  } finally {
    await worker.close();
  }
});

test('X-Request-Id is echoed or generated, and logged as JSON lines with request fields', async () => {
  const worker = await startWorker();
  try {
    const png = await smallPng();
    const echoed = await post(worker, png, { query: '?op=grayscale', headers: { 'x-request-id': 'req-42' } });
    assert.equal(echoed.headers.get('x-request-id'), 'req-42');
    await echoed.arrayBuffer();
    const generated = await post(worker, Buffer.alloc(0));
    assert.match(generated.headers.get('x-request-id'), /^[0-9a-f-]{36}$/);
    await generated.arrayBuffer();
    await waitFor(() => worker.lines.some((line) => line.includes('req-42')), 'the log line');
    const records = worker.lines.map((line) => JSON.parse(line));
    for (const record of records) {
      assert.ok(record.time && record.level && record.msg);
      assert.equal(record.service, 'worker-nodejs');
    }
    const mine = records.find((r) => r.request_id === 'req-42');
    assert.equal(mine.op, 'grayscale');
    assert.equal(mine.status, 200);
    assert.equal(mine.bytes_in, png.length);
    assert.ok(mine.bytes_out > 0 && mine.ms >= 0);
  } finally {
    await worker.close();
  }
});
