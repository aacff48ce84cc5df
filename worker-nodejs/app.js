'use strict';
// HTTP layer: routes, checks in the contract's order, body streaming, negotiation, logs.
// Pixels live in image.js; this file never touches them.

const crypto = require('node:crypto');
const express = require('express');
const busboy = require('busboy');

const { version } = require('./package.json');
const { SERVICE } = require('./log');
const image = require('./image');

const PRIMARY_OP = 'sepia';
// Every op in image.js matches Pillow within +-1 (blur exactly: see test/image.test.js), so
// all are offered; the coordinator routes by this list.
const { OPERATIONS, FORMATS } = image;
const ACCEPT_TO_FORMAT = {
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'image/webp': 'webp',
  'image/x-portable-pixmap': 'raw',
};
const SELF_CHECK_EVERY_MS = 10_000;
const LARGE_REQUEST_BYTES = 1_000_000;
const BUSY_RETRY_AFTER_S = 1;
const DRAINING_RETRY_AFTER_S = 5;
const REQUEST_ID_PATTERN = /^[\x21-\x7e][\x20-\x7e]{0,127}$/;

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const oneLine = (text) => String(text).replace(/\s+/g, ' ').trim().slice(0, 500);

function sendError(res, status, code, message, headers = {}) {
  if (res.headersSent || res.destroyed) return;
  res.set(headers);
  if (res.app.locals.worker.draining) res.set('Connection', 'close');
  res.status(status).json({ error: { code, message: oneLine(message) } });
}

/** sha256 both sides first, so the comparison takes the same time whatever the lengths. */
function tokenMatches(presented, expected) {
  const a = crypto.createHash('sha256').update(presented, 'utf8').digest();
  const b = crypto.createHash('sha256').update(expected, 'utf8').digest();
  return crypto.timingSafeEqual(a, b);
}

function bearerToken(req) {
  const header = req.get('authorization') || '';
  const match = /^Bearer[ \t]+(\S.*?)\s*$/i.exec(header);
  return match ? match[1] : null;
}

// ---------------------------------------------------------------- parameters

function single(query, key) {
  const value = query[key];
  if (Array.isArray(value)) throw new HttpError(400, 'bad_param', `${key} is given more than once`);
  return value;
}

function integerParam(query, key, fallback, min, max) {
  const raw = single(query, key);
  if (raw === undefined) return fallback;
  if (!/^-?\d{1,12}$/.test(raw)) throw new HttpError(400, 'bad_param', `${key} must be an integer ${min}-${max}`);
  const value = Number(raw);
  if (value < min || value > max) throw new HttpError(400, 'bad_param', `${key} must be an integer ${min}-${max}`);
  return value;
}

function radiusParam(query) {
  const raw = single(query, 'radius');
  if (raw === undefined) return 2;
  const value = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(raw) ? Number(raw) : NaN;
  if (!(value > 0 && value <= 50)) throw new HttpError(400, 'bad_param', 'radius must be a number with 0 < radius <= 50');
  return value;
}

function booleanParam(query, key, fallback) {
  const raw = single(query, key);
  if (raw === undefined) return fallback;
  const text = raw.toLowerCase();
  if (text === 'true') return true;
  if (text === 'false') return false;
  throw new HttpError(400, 'bad_param', `${key} must be true or false`);
}

function channelsParam(query) {
  const raw = single(query, 'channels');
  if (raw === undefined) return '3';
  if (!image.CHANNELS.includes(raw)) {
    throw new HttpError(400, 'bad_param', `channels must be one of ${image.CHANNELS.join(', ')}`);
  }
  return raw;
}

function formatFromAccept(accept) {
  for (const part of (accept || '').split(',')) {
    const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    const q = params.find((p) => p.startsWith('q='));
    if (q && !(Number(q.slice(2)) > 0)) continue;
    if (ACCEPT_TO_FORMAT[type]) return ACCEPT_TO_FORMAT[type];
  }
  return 'png';
}

/** Everything the query and Accept header ask for; throws 400 unknown_op / bad_param. */
function parseJob(req) {
  const { query } = req;
  let op = PRIMARY_OP;
  if (query.op !== undefined) {
    op = Array.isArray(query.op) ? '' : query.op;
    if (!OPERATIONS.includes(op)) {
      throw new HttpError(400, 'unknown_op', `unknown op ${JSON.stringify(op).slice(0, 60)}; offered: ${OPERATIONS.join(', ')}`);
    }
  }
  let format = formatFromAccept(req.get('accept'));
  const asked = single(query, 'format');
  if (asked !== undefined) {
    if (!FORMATS.includes(asked)) {
      throw new HttpError(400, 'bad_param', `format must be one of ${FORMATS.join(', ')}`);
    }
    format = asked;
  }
  return {
    op,
    format,
    quality: integerParam(query, 'quality', 90, 1, 100),
    lossless: booleanParam(query, 'lossless', false),
    compression: integerParam(query, 'compression', 6, 0, 9),
    radius: radiusParam(query),
    channels: channelsParam(query),
  };
}

// ---------------------------------------------------------------- body

/**
 * Reads the request body, failing with 413 as soon as the declared or counted size passes
 * maxBytes. With a Content-Length the buffer is allocated once, so nothing is copied twice.
 */
function readBody(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const declared = req.get('content-length');
    const length = declared === undefined ? null : Number(declared);
    if (length !== null && length > maxBytes) {
      reject(new HttpError(413, 'too_large', `body is ${length} bytes, limit is ${maxBytes}`));
      return;
    }
    const preallocated = length !== null && Number.isSafeInteger(length) ? Buffer.allocUnsafe(length) : null;
    const chunks = [];
    let received = 0;
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk) => {
      if (received + chunk.length > maxBytes) {
        finish(new HttpError(413, 'too_large', `body is over the limit of ${maxBytes} bytes`));
        return;
      }
      if (preallocated && received + chunk.length <= preallocated.length) chunk.copy(preallocated, received);
      else chunks.push(chunk);
      received += chunk.length;
    };
    const onEnd = () => {
      if (preallocated && chunks.length === 0) finish(null, preallocated.subarray(0, received));
      else finish(null, Buffer.concat(preallocated ? [preallocated.subarray(0, received), ...chunks] : chunks));
    };
    const onError = (err) => finish(Object.assign(new Error('request stream failed'), { cause: err, aborted: true }));
    const onAborted = () => finish(Object.assign(new Error('client went away'), { aborted: true }));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
  });
}

function isImageType(type) {
  return type.startsWith('image/');
}

/** The bytes of multipart field `image` (a file part), or null. */
function multipartImage(headers, body) {
  return new Promise((resolve) => {
    let parser;
    try {
      parser = busboy({ headers, limits: { files: 8, fields: 64, parts: 72 } });
    } catch {
      resolve(null);
      return;
    }
    let found = null;
    parser.on('file', (name, stream) => {
      if (name !== 'image' || found) {
        stream.resume();
        return;
      }
      const parts = [];
      stream.on('data', (chunk) => parts.push(chunk));
      stream.on('end', () => {
        found = Buffer.concat(parts);
      });
    });
    parser.on('close', () => resolve(found));
    parser.on('error', () => resolve(null));
    parser.end(body);
  });
}

// ---------------------------------------------------------------- self-check

const SELF_CHECK_PIXELS = Buffer.from([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 100, 50]);

/** One tiny PNG through decode, the primary op and encode; resolves null when healthy. */
async function defaultSelfCheck() {
  const tiny = { width: 2, height: 2, data: Buffer.from(SELF_CHECK_PIXELS) };
  const png = await image.encodeImage(tiny, 'png', {});
  const result = await image.processImage(png, { op: PRIMARY_OP, format: 'png', maxPixels: 4 });
  const roundTrip = await image.decodeImage(Buffer.concat(result.parts), { maxPixels: 4 });
  const expected = image.sepiaInPlace(Buffer.from(SELF_CHECK_PIXELS));
  if (!roundTrip.data.equals(expected)) return 'self-check image came back with wrong pixels';
  return null;
}

// ---------------------------------------------------------------- the app

/**
 * The Express app. `options.logger` is required; `options.selfCheck` (async () => reason|null)
 * replaces the built-in one in tests; `options.afterLargeRequest` runs once a request that
 * moved megabytes is over (server.js uses it to return big buffers to the OS promptly).
 * app.locals.worker holds the live state that server.js drives: startDraining(),
 * whenIdle() and the in-flight count.
 */
function buildApp(config, {
  logger, selfCheck = defaultSelfCheck, now = () => Date.now(), afterLargeRequest = () => {},
} = {}) {
  if (!logger) throw new Error('buildApp needs a logger');
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag'); // hashing a large image body per response buys nothing here

  const idleWaiters = [];
  const state = {
    draining: false,
    inflight: 0,
    startDraining() {
      state.draining = true;
    },
    /** Resolves once no /process request is in flight. */
    whenIdle() {
      if (state.inflight === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
  };
  app.locals.worker = state;

  let health = { checkedAt: -Infinity, reason: null, running: null };
  async function currentHealthProblem() {
    if (now() - health.checkedAt < SELF_CHECK_EVERY_MS) return health.reason;
    if (!health.running) {
      health.running = (async () => {
        let reason;
        try {
          reason = await selfCheck();
        } catch (err) {
          reason = `self-check failed: ${oneLine(err && err.message)}`;
        }
        health = { checkedAt: now(), reason, running: null };
        if (reason) logger.error('self-check failed', { reason });
        return reason;
      })();
    }
    return health.running;
  }

  // Request id and the one log line per request, for every route.
  app.use((req, res, next) => {
    const started = process.hrtime.bigint();
    const given = req.get('x-request-id');
    req.id = given && REQUEST_ID_PATTERN.test(given) ? given : crypto.randomUUID();
    res.set('X-Request-Id', req.id);
    res.set('X-Worker', SERVICE);
    res.locals.bytesIn = 0;
    res.on('close', () => {
      const fields = {
        request_id: req.id,
        method: req.method,
        path: req.path,
        op: res.locals.op ?? null,
        status: res.headersSent ? res.statusCode : null, // null: the client left first
        ms: Number((Number(process.hrtime.bigint() - started) / 1e6).toFixed(2)),
        bytes_in: res.locals.bytesIn,
        bytes_out: Number(res.get('content-length') || 0),
      };
      if (!res.writableFinished) fields.aborted = true;
      if (fields.bytes_in + fields.bytes_out >= LARGE_REQUEST_BYTES) setImmediate(afterLargeRequest);
      if (req.path === '/healthz' && res.statusCode === 200) logger.debug('request', fields);
      else logger.info('request', fields);
    });
    next();
  });

  app.get('/healthz', async (req, res) => {
    const problem = state.draining ? 'draining after SIGTERM' : await currentHealthProblem();
    let status = 'ok';
    if (state.draining) status = 'draining';
    else if (problem) status = 'unhealthy';
    const body = {
      status,
      service: SERVICE,
      runtime: 'nodejs',
      version,
      build: config.build,
      primary: PRIMARY_OP,
      operations: OPERATIONS,
      formats: FORMATS,
      inflight: state.inflight,
      max_inflight: config.maxInflight,
      max_bytes: config.maxBytes,
      max_pixels: config.maxPixels,
    };
    if (problem) body.reason = problem;
    if (state.draining) res.set('Connection', 'close');
    res.status(status === 'ok' ? 200 : 503).json(body);
  });

  app.post('/process', async (req, res) => {
    if (state.draining) {
      sendError(res, 503, 'draining', 'worker is shutting down; retry on another worker',
        { 'Retry-After': String(DRAINING_RETRY_AFTER_S), Connection: 'close' });
      return;
    }
    if (config.token) {
      const presented = bearerToken(req);
      if (presented === null || !tokenMatches(presented, config.token)) {
        sendError(res, 401, 'unauthorized', 'missing or wrong bearer token', { 'WWW-Authenticate': 'Bearer' });
        return;
      }
    }
    if (state.inflight >= config.maxInflight) {
      sendError(res, 503, 'busy', `${config.maxInflight} requests already in flight`,
        { 'Retry-After': String(BUSY_RETRY_AFTER_S) });
      return;
    }
    // The slot is taken now, when the headers have arrived, and freed when the response is
    // handed to the socket or the connection drops, whichever comes first.
    state.inflight += 1;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        state.inflight -= 1;
        if (state.inflight === 0) idleWaiters.splice(0).forEach((resolve) => resolve());
      }
    };
    res.on('close', release);

    try {
      await handleProcess(req, res, release);
    } catch (err) {
      // The work is over: free the slot before answering, so a client that sends its next
      // request the moment it has read this answer never finds its own slot still taken.
      release();
      if (err.aborted) return;
      if (err instanceof HttpError || err instanceof image.ImageError) {
        const headers = err.code === 'too_large' ? { Connection: 'close' } : {};
        sendError(res, err.status, err.code, err.message, headers);
        return;
      }
      logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
      sendError(res, 500, 'internal', 'unexpected worker error');
    }
  });

  async function handleProcess(req, res, release) {
    const body = await readBody(req, config.maxBytes);
    res.locals.bytesIn = body.length;
    const type = (req.get('content-type') || '').split(';')[0].trim().toLowerCase();
    const isMultipart = type === 'multipart/form-data';
    if (!isMultipart && !isImageType(type)) {
      throw new HttpError(415, 'unsupported_type',
        `content type ${JSON.stringify(type || 'none')} is neither image/* nor multipart/form-data`);
    }
    const job = parseJob(req);
    res.locals.op = job.op;
    const input = isMultipart ? await multipartImage(req.headers, body) : body;
    if (!input || input.length === 0) {
      throw new HttpError(400, 'missing_image', isMultipart ? 'multipart body has no file field "image"' : 'request body is empty');
    }
    const started = process.hrtime.bigint();
    // The body is ours alone, so the image code may work inside it.
    const result = await image.processImage(input, { ...job, maxPixels: config.maxPixels, reuseInput: true });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (res.destroyed) return;
    release(); // as for errors: the slot is free before the client can have the answer
    if (state.draining) res.set('Connection', 'close');
    res.status(200);
    res.set({
      'Content-Type': result.contentType,
      'Content-Length': String(result.length),
      'X-Processing-Ms': ms.toFixed(2),
    });
    const last = result.parts.length - 1;
    result.parts.forEach((part, index) => (index === last ? res.end(part) : res.write(part)));
  }

  app.all('/healthz', (req, res) => {
    sendError(res, 405, 'method_not_allowed', `${req.method} is not allowed on /healthz`, { Allow: 'GET, HEAD' });
  });
  app.all('/process', (req, res) => {
    sendError(res, 405, 'method_not_allowed', `${req.method} is not allowed on /process`, { Allow: 'POST' });
  });
  app.use((req, res) => {
    sendError(res, 404, 'not_found', `no route ${req.method} ${req.path}`);
  });
  // Express reaches here only for errors outside the handlers above (e.g. a malformed URL).
  app.use((err, req, res, _next) => {
    const status = err && Number.isInteger(err.status) && err.status >= 400 && err.status < 500 ? err.status : 500;
    if (status === 500) logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
    sendError(res, status === 500 ? 500 : 404, status === 500 ? 'internal' : 'not_found', oneLine(err && err.message));
  });

  return app;
}

module.exports = { buildApp, PRIMARY_OP, OPERATIONS, FORMATS, tokenMatches, formatFromAccept };
