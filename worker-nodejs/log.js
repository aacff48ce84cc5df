'use strict';
// JSON lines on stdout, one object per event, and the one line per HTTP request. Callers
// never pass the token.

const crypto = require('node:crypto');

const SERVICE = 'worker-nodejs';
const REQUEST_ID_PATTERN = /^[\x21-\x7e][\x20-\x7e]{0,127}$/;
const LARGE_REQUEST_BYTES = 1_000_000;
const RANKS = { debug: 10, info: 20, warning: 30, error: 40 };

/**
 * A logger with debug/info/warning/error(msg, fields). `write` is injectable for tests;
 * by default lines go to stdout.
 */
function createLogger({ level = 'info', write = (line) => process.stdout.write(line) } = {}) {
  const threshold = RANKS[level] ?? RANKS.info;
  const emit = (lvl, msg, fields) => {
    if (RANKS[lvl] < threshold) return;
    const record = { time: new Date().toISOString(), level: lvl, service: SERVICE, msg, ...fields };
    write(`${JSON.stringify(record)}\n`);
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warning: (msg, fields) => emit('warning', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
  };
}

/** The request's fields for its log line, once the response is over. */
function requestFields(req, res, started) {
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
  return fields;
}

/**
 * Express middleware: gives every request an id (a sane X-Request-Id, else a new UUID),
 * echoed with X-Worker, and logs one line when the response is over (a healthy /healthz at
 * debug). `afterLargeRequest` runs once a request that moved megabytes is over.
 */
function requestLog(logger, afterLargeRequest) {
  return (req, res, next) => {
    const started = process.hrtime.bigint();
    const given = req.get('x-request-id');
    req.id = given && REQUEST_ID_PATTERN.test(given) ? given : crypto.randomUUID();
    res.set('X-Request-Id', req.id);
    res.set('X-Worker', SERVICE);
    res.locals.bytesIn = 0;
    res.on('close', () => {
      const fields = requestFields(req, res, started);
      if (fields.bytes_in + fields.bytes_out >= LARGE_REQUEST_BYTES) setImmediate(afterLargeRequest);
      if (req.path === '/healthz' && res.statusCode === 200) logger.debug('request', fields);
      else logger.info('request', fields);
    });
    next();
  };
}

module.exports = { createLogger, requestLog, SERVICE };
