'use strict';
// HTTP layer: routes, checks in the contract's order, admission, health, logs.
// Pixels live in image.js, the wire in transport.js, request parsing in params.js.

const crypto = require('node:crypto');
const express = require('express');

const { version } = require('./package.json');
const { SERVICE } = require('./log');
const image = require('./image');
const { HttpError, PRIMARY_OP, bearerToken, parseJob, formatFromAccept } = require('./params');
const { createAdmission } = require('./admission');
const {
  oneLine, sendError, refuse, declaredTooLarge, readBody, multipartImage, writeReply, createServer,
} = require('./transport');
const { createHealth } = require('./health');

// Every op in image.js matches Pillow within +-1 (blur exactly: see test/image.test.js), so
// all are offered; the coordinator routes by this list.
const { OPERATIONS, FORMATS } = image;
const LARGE_REQUEST_BYTES = 1_000_000;
const BUSY_RETRY_AFTER_S = 1;
const DRAINING_RETRY_AFTER_S = 5;
// A libvips header read or decode of a request is stopped after this long (a decode bomb the
// structural checks miss); 50 MP decodes take a few seconds, so this leaves a wide margin.
const WORK_TIMEOUT_S = 60;
const REQUEST_ID_PATTERN = /^[\x21-\x7e][\x20-\x7e]{0,127}$/;

/** sha256 both sides first, so the comparison takes the same time whatever the lengths. */
function tokenMatches(presented, expected) {
  const a = crypto.createHash('sha256').update(presented, 'utf8').digest();
  const b = crypto.createHash('sha256').update(expected, 'utf8').digest();
  return crypto.timingSafeEqual(a, b);
}

function contentType(req) {
  return (req.get('content-type') || '').split(';')[0].trim().toLowerCase();
}

/** The refusal a request gets before its body is needed (413 by length, 415, 400), or null. */
function refusalBeforeBody(req, config) {
  const tooLarge = declaredTooLarge(req, config.maxBytes);
  if (tooLarge) return tooLarge;
  const type = contentType(req);
  if (type !== 'multipart/form-data' && !type.startsWith('image/')) {
    return new HttpError(415, 'unsupported_type',
      `content type ${JSON.stringify(type || 'none')} is neither image/* nor multipart/form-data`);
  }
  try {
    parseJob(req.query, req.get('accept'));
  } catch (err) {
    if (err instanceof HttpError) return err;
    throw err;
  }
  return null;
}

const busy = (message) => Object.assign(new HttpError(503, 'busy', message),
  { headers: { 'Retry-After': String(BUSY_RETRY_AFTER_S) } });

/** The request log line, once the response is over, for every route. */
function requestLog(logger, afterLargeRequest) {
  return (req, res, next) => {
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
  };
}

/**
 * The Express app. `options.logger` is required; `options.selfCheck` (async () => reason|null)
 * replaces the built-in one in tests; `options.afterLargeRequest` runs once a request that
 * moved megabytes is over (server.js uses it to return big buffers to the OS promptly);
 * `options.replyPacing` ({allowanceMs, minBytesPerSecond}) overrides the reply rate bound.
 * app.locals.worker holds the live state that server.js drives: startDraining(),
 * whenIdle() and the in-flight counts.
 */
function buildApp(config, {
  logger, selfCheck, now = () => Date.now(), afterLargeRequest = () => {}, replyPacing = {},
} = {}) {
  if (!logger) throw new Error('buildApp needs a logger');
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag'); // hashing a large image body per response buys nothing here

  const state = createAdmission(config);
  app.locals.worker = state;
  const health = createHealth({ selfCheck, now, logger, timeoutSeconds: WORK_TIMEOUT_S });

  app.use(requestLog(logger, afterLargeRequest));

  app.get('/healthz', (req, res) => {
    // Answered from memory: the self-check runs in the background (health.js).
    const problem = state.draining ? 'draining after SIGTERM' : health.problem();
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
      inflight_pixels: state.inflightPixels,
      max_inflight_pixels: config.maxInflightPixels,
      max_bytes: config.maxBytes,
      max_pixels: config.maxPixels,
    };
    if (problem) body.reason = problem;
    if (state.draining) res.set('Connection', 'close');
    res.status(status === 'ok' ? 200 : 503).json(body);
  });

  app.post('/process', async (req, res) => {
    if (state.draining) {
      refuse(req, res, 503, 'draining', 'worker is shutting down; retry on another worker',
        { 'Retry-After': String(DRAINING_RETRY_AFTER_S) });
      return;
    }
    if (config.token) {
      const presented = bearerToken(req.get('authorization'));
      if (presented === null || !tokenMatches(presented, config.token)) {
        refuse(req, res, 401, 'unauthorized', 'missing or wrong bearer token', { 'WWW-Authenticate': 'Bearer' });
        return;
      }
    }
    const slot = state.enter();
    if (!slot) {
      refuse(req, res, 503, 'busy', `${config.maxInflight} requests already in flight`,
        { 'Retry-After': String(BUSY_RETRY_AFTER_S) });
      return;
    }
    // The slot (and the pixels it claims) is held until both the work has ended and the
    // reply is fully written or the connection is gone: memory follows the admission bound.
    const work = new AbortController();
    let holders = 2;
    const letGo = () => {
      holders -= 1;
      if (holders === 0) slot.leave();
    };
    res.once('close', () => {
      work.abort();
      letGo();
    });
    try {
      await handleProcess(req, res, slot, work.signal);
    } catch (err) {
      answerFailure(req, res, err);
    } finally {
      letGo();
    }
  });

  async function handleProcess(req, res, slot, signal) {
    const early = refusalBeforeBody(req, config);
    if (early) {
      refuse(req, res, early.status, early.code, early.message);
      return;
    }
    const job = parseJob(req.query, req.get('accept'));
    res.locals.op = job.op;
    let body;
    try {
      body = await readBody(req, config.maxBytes);
    } catch (err) {
      if (err.code !== 'too_large') throw err;
      refuse(req, res, err.status, err.code, err.message);
      return;
    }
    res.locals.bytesIn = body.length;
    const isMultipart = contentType(req) === 'multipart/form-data';
    const input = isMultipart ? await multipartImage(req.headers, body) : body;
    if (!input || input.length === 0) {
      throw new HttpError(400, 'missing_image', isMultipart ? 'multipart body has no part "image"' : 'request body is empty');
    }
    const header = await image.inspect(input, { maxPixels: config.maxPixels, timeoutSeconds: WORK_TIMEOUT_S });
    if (!slot.claimPixels(header.width * header.height)) {
      throw busy(`${state.inflightPixels} pixels already in flight, limit is ${config.maxInflightPixels}`);
    }
    const started = process.hrtime.bigint();
    // The body is ours alone, so the image code may work inside it.
    const result = await image.processImage(input, {
      ...job, maxPixels: config.maxPixels, reuseInput: true, header, signal, timeoutSeconds: WORK_TIMEOUT_S,
    });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (res.destroyed) return;
    if (state.draining) res.set('Connection', 'close');
    res.status(200);
    res.set({
      'Content-Type': result.contentType,
      'Content-Length': String(result.length),
      'X-Processing-Ms': ms.toFixed(2),
    });
    await writeReply(res, result.parts, replyPacing);
  }

  function answerFailure(req, res, err) {
    if (err.aborted || res.destroyed) return;
    if (err instanceof HttpError || err instanceof image.ImageError) {
      const headers = { ...(err.headers || {}) };
      if (state.draining) headers.Connection = 'close';
      sendError(res, err.status, err.code, err.message, headers);
      return;
    }
    logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
    sendError(res, 500, 'internal', 'unexpected worker error');
  }

  app.all('/healthz', (req, res) => {
    refuse(req, res, 405, 'method_not_allowed', `${req.method} is not allowed on /healthz`, { Allow: 'GET, HEAD' });
  });
  app.all('/process', (req, res) => {
    refuse(req, res, 405, 'method_not_allowed', `${req.method} is not allowed on /process`, { Allow: 'POST' });
  });
  app.use((req, res) => {
    refuse(req, res, 404, 'not_found', `no route ${req.method} ${req.path}`);
  });
  // Express reaches here only for errors outside the handlers above (e.g. a malformed URL).
  app.use((err, req, res, _next) => {
    const status = err && Number.isInteger(err.status) && err.status >= 400 && err.status < 500 ? err.status : 500;
    if (status === 500) logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
    sendError(res, status === 500 ? 500 : 404, status === 500 ? 'internal' : 'not_found', oneLine(err && err.message));
  });

  return app;
}

module.exports = {
  buildApp, createServer, PRIMARY_OP, OPERATIONS, FORMATS, tokenMatches, formatFromAccept,
};
