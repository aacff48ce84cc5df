'use strict';
// The HTTP handlers: routes, the contract's check order, admission, the reply. Request
// parsing lives in params.js, in-flight state in state.js, the wire in transport.js, pixels
// in sniff/decode/ops/encode.js. buildApp only wires them together.

const express = require('express');

const { version } = require('./package.json');
const { SERVICE, requestLog } = require('./log');
const { HttpError, ImageError } = require('./errors');
const { PRIMARY_OP, authorized, mediaType, refusalBeforeBody, parseJob } = require('./params');
const { inspect, decodeImage } = require('./decode');
const { OPERATIONS, applyOperationAsync } = require('./ops');
const { FORMATS, encodeReply } = require('./encode');
const { pauseFor } = require('./steps');
const { createWorkerState } = require('./state');
const { createHealth } = require('./health');
const { createMetrics } = require('./metrics');
const { NO_TRACING } = require('./tracing');
const { loadSecrets } = require('./secrets');
const { oneLine, sendError, refuse, readBody, multipartImage, writeReply } = require('./transport');

const BUSY_RETRY_AFTER_S = 1;
const DRAINING_RETRY_AFTER_S = 5;
// A libvips header read or decode of a request is stopped after this long (a decode bomb the
// structural checks miss); 50 MP decodes take a few seconds, so this leaves a wide margin.
const WORK_TIMEOUT_S = 60;

const busy = (message) =>
  Object.assign(new HttpError(503, 'busy', message), { headers: { 'Retry-After': String(BUSY_RETRY_AFTER_S) } });

// ---------------------------------------------------------------- GET /healthz

function healthBody({ config, state, secrets }, status, problem) {
  const body = {
    status,
    service: SERVICE,
    runtime: 'nodejs',
    version,
    build: config.build,
    primary: PRIMARY_OP,
    // Every op matches Pillow within +-1 (blur exactly), so all are offered; the coordinator
    // routes by this list.
    operations: OPERATIONS,
    formats: FORMATS,
    inflight: state.inflight,
    max_inflight: config.maxInflight,
    inflight_pixels: state.inflightPixels,
    max_inflight_pixels: config.maxInflightPixels,
    max_bytes: config.maxBytes,
    max_pixels: config.maxPixels,
    tls: secrets.tls,
  };
  if (problem) body.reason = problem;
  return body;
}

/** Answered from memory: the self-check runs in the background (health.js). */
const healthz = (ctx) => (req, res) => {
  const { state, health } = ctx;
  const problem = state.draining ? 'draining after SIGTERM' : health.problem();
  let status = 'ok';
  if (state.draining) status = 'draining';
  else if (problem) status = 'unhealthy';
  if (state.draining) res.set('Connection', 'close');
  res.status(status === 'ok' ? 200 : 503).json(healthBody(ctx, status, problem));
};

// ---------------------------------------------------------------- POST /process

/** A slot for the request, or null once it has been refused (draining, token, busy). */
function admit({ config, state, metrics, secrets }, req, res) {
  if (state.draining) {
    metrics.rejected('draining');
    const retry = { 'Retry-After': String(DRAINING_RETRY_AFTER_S) };
    refuse(req, res, 503, 'draining', 'worker is shutting down; retry on another worker', retry);
    return null;
  }
  if (!authorized(req.get('authorization'), secrets.tokens())) {
    refuse(req, res, 401, 'unauthorized', 'missing or wrong bearer token', { 'WWW-Authenticate': 'Bearer' });
    return null;
  }
  const slot = state.enter();
  if (!slot) {
    metrics.rejected('busy');
    const retry = { 'Retry-After': String(BUSY_RETRY_AFTER_S) };
    refuse(req, res, 503, 'busy', `${config.maxInflight} requests already in flight`, retry);
  }
  return slot;
}

const processRoute = (ctx) => async (req, res) => {
  const slot = admit(ctx, req, res);
  if (!slot) return;
  const span = ctx.tracing.startRequest(req.headers, 'POST /process', {
    'http.request.method': req.method,
    'url.path': req.path,
    'worker.request_id': req.id,
  });
  res.once('close', () => ctx.tracing.endRequest(span, res.statusCode));
  // The slot (and the pixels it claims) is held until both the work has ended and the
  // reply is fully written or the connection is gone: memory follows the admission bound.
  const letGo = slot.heldBy(2);
  const work = new AbortController();
  res.once('close', () => {
    work.abort();
    letGo();
  });
  try {
    await handleProcess(ctx, req, res, slot, { signal: work.signal, span });
  } catch (err) {
    answerFailure(ctx, req, res, err);
  } finally {
    letGo();
  }
};

async function handleProcess(ctx, req, res, slot, { signal, span }) {
  const { config, state, metrics } = ctx;
  const request = {
    query: req.query,
    contentLength: req.get('content-length'),
    contentType: req.get('content-type'),
    accept: req.get('accept'),
  };
  const early = refusalBeforeBody(request, config.maxBytes);
  if (early) {
    refuse(req, res, early.status, early.code, early.message);
    return;
  }
  const job = parseJob(req.query, request.accept);
  res.locals.op = job.op;
  const input = await readInput(ctx, req, res);
  if (!input) return;
  res.locals.metricOp = job.op; // the metrics' op label: set once the job is parsed and the image read
  const header = await decodeStep(ctx, () =>
    inspect(input, { maxPixels: config.maxPixels, timeoutSeconds: WORK_TIMEOUT_S }),
  );
  if (!slot.claimPixels(header.width * header.height)) {
    metrics.rejected('busy');
    throw busy(`${state.inflightPixels} pixels already in flight, limit is ${config.maxInflightPixels}`);
  }
  const started = process.hrtime.bigint();
  const reply = await runJob(ctx, input, job, header, { signal, span });
  await sendReply(ctx, res, reply, Number(process.hrtime.bigint() - started) / 1e6);
}

/** The image bytes of the body (raw or multipart part `image`); null once refused as 413. */
async function readInput({ config }, req, res) {
  let body;
  try {
    body = await readBody(req, config.maxBytes);
  } catch (err) {
    if (err.code !== 'too_large') throw err;
    refuse(req, res, err.status, err.code, err.message);
    return null;
  }
  res.locals.bytesIn = body.length;
  const isMultipart = mediaType(req.get('content-type')) === 'multipart/form-data';
  const input = isMultipart ? await multipartImage(req.headers, body) : body;
  if (!input || input.length === 0) {
    const message = isMultipart ? 'multipart body has no part "image"' : 'request body is empty';
    throw new HttpError(400, 'missing_image', message);
  }
  return input;
}

/** Decode, op, encode. The body is ours alone, so decoding may work inside it. */
async function runJob(ctx, input, job, header, { signal, span }) {
  const { config, tracing } = ctx;
  const options = { maxPixels: config.maxPixels, reuseInput: true, header, signal, timeoutSeconds: WORK_TIMEOUT_S };
  const image = await tracing.child(span, 'decode', () => decodeStep(ctx, () => decodeImage(input, options)));
  const pause = pauseFor(signal);
  await tracing.child(span, 'op', () => applyOperationAsync(image, job.op, job, pause));
  return tracing.child(span, 'encode', () => encodeReply(image, job, pause));
}

/** A sniff/decode step; an ImageError it throws is counted as a decode failure. */
async function decodeStep({ metrics }, step) {
  try {
    return await step();
  } catch (err) {
    if (err instanceof ImageError) metrics.decodeFailed(err.code);
    throw err;
  }
}

async function sendReply({ state, replyPacing }, res, reply, ms) {
  if (res.destroyed) return;
  if (state.draining) res.set('Connection', 'close');
  res.status(200);
  res.set({
    'Content-Type': reply.contentType,
    'Content-Length': String(reply.length),
    'X-Processing-Ms': ms.toFixed(2),
  });
  await writeReply(res, reply.parts, replyPacing);
}

function answerFailure({ state, logger }, req, res, err) {
  if (err.aborted || res.destroyed) return;
  if (err instanceof HttpError || err instanceof ImageError) {
    const headers = { ...(err.headers || {}) };
    if (state.draining) headers.Connection = 'close';
    sendError(res, err.status, err.code, err.message, headers);
    return;
  }
  logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
  sendError(res, 500, 'internal', 'unexpected worker error');
}

// ---------------------------------------------------------------- everything else

const methodNotAllowed = (path, allow) => (req, res) => {
  refuse(req, res, 405, 'method_not_allowed', `${req.method} is not allowed on ${path}`, { Allow: allow });
};

const notFound = (req, res) => refuse(req, res, 404, 'not_found', `no route ${req.method} ${req.path}`);

/** Express reaches this only for errors outside the handlers above (e.g. a malformed URL). */
const unexpectedError = (logger) => (err, req, res, _next) => {
  const status = err && Number.isInteger(err.status) && err.status >= 400 && err.status < 500 ? err.status : 500;
  if (status === 500) logger.error('unexpected error', { request_id: req.id, error: oneLine(err && err.stack) });
  sendError(res, status === 500 ? 500 : 404, status === 500 ? 'internal' : 'not_found', oneLine(err && err.message));
};

/**
 * The Express app. `options.logger` is required; `options.selfCheck` (async () => reason|null)
 * replaces the built-in one in tests; `options.afterLargeRequest` runs once a request that
 * moved megabytes is over (server.js uses it to return big buffers to the OS promptly);
 * `options.replyPacing` ({allowanceMs, minBytesPerSecond}) overrides the reply rate bound;
 * `options.tracing` (tracing.js; off by default) gets the /process spans; `options.secrets`
 * (secrets.js) holds the accepted tokens, loaded from `config` when not given.
 * app.locals.worker holds the live state (state.js) that server.js drains.
 */
function buildApp(
  config,
  {
    logger,
    selfCheck,
    now = () => Date.now(),
    afterLargeRequest = () => {},
    replyPacing = {},
    tracing = NO_TRACING,
    secrets,
  } = {},
) {
  if (!logger) throw new Error('buildApp needs a logger');
  secrets ??= loadSecrets(config, { logger });
  const state = createWorkerState(config);
  const health = createHealth({ selfCheck, now, logger, timeoutSeconds: WORK_TIMEOUT_S });
  const metrics = createMetrics({ enabled: config.metrics !== false });
  const ctx = { config, logger, state, health, replyPacing, metrics, tracing, secrets };
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag'); // hashing a large image body per response buys nothing here
  app.locals.worker = state;
  app.use(requestLog(logger, afterLargeRequest));
  app.use(metrics.middleware);
  app.get('/healthz', healthz(ctx));
  if (metrics.route) app.get('/metrics', metrics.route);
  app.post('/process', processRoute(ctx));
  app.all('/healthz', methodNotAllowed('/healthz', 'GET, HEAD'));
  if (metrics.route) app.all('/metrics', methodNotAllowed('/metrics', 'GET, HEAD'));
  app.all('/process', methodNotAllowed('/process', 'POST'));
  app.use(notFound);
  app.use(unexpectedError(logger));
  return app;
}

module.exports = { buildApp };
