'use strict';
// The Prometheus metrics behind GET /metrics (contract "Metrics"): the same names and labels as
// worker-python's metrics.py, in one registry per app, answered from memory.

let client; // prom-client, required only when metrics are on (WORKER_METRICS=off measures its cost)

// OpenTelemetry's http.server.request.duration buckets, stretched to the worker's 60 s decode bound
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE']);
const ROUTES = new Set(['/process', '/healthz']);
const REJECTION_REASONS = ['busy', 'draining'];
const DECODE_FAILURE_REASONS = ['bad_image', 'unsupported_type', 'too_many_pixels'];
const NO_OP = 'none';

/** OpenTelemetry's rule: a method outside the known set is `_OTHER` (bounded label values). */
const methodLabel = (method) => (KNOWN_METHODS.has(method) ? method : '_OTHER');
const routeLabel = (path) => (ROUTES.has(path) ? path : 'other');

/** Express middleware: counts a request once its reply is over; /metrics itself is not counted. */
const countRequests =
  ({ duration, active, bodyIn, bodyOut }) =>
  (req, res, next) => {
    if (req.path === '/metrics') return next();
    const started = process.hrtime.bigint();
    active.inc();
    res.once('close', () => {
      active.dec();
      const op = res.locals.metricOp || NO_OP;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      duration.labels(methodLabel(req.method), routeLabel(req.path), String(res.statusCode), op).observe(seconds);
      const bytesIn = res.locals.bytesIn || 0;
      const bytesOut = Number(res.get('content-length') || 0);
      if (bytesIn) bodyIn.labels(op).inc(bytesIn);
      if (bytesOut) bodyOut.labels(op).inc(bytesOut);
    });
    return next();
  };

/** WORKER_METRICS=off (benchmarking only): nothing counted, and the app serves no /metrics. */
const NO_METRICS = Object.freeze({
  middleware: (req, res, next) => next(),
  route: null,
  rejected: () => {},
  decodeFailed: () => {},
});

function createMetrics({ enabled = true } = {}) {
  if (!enabled) return NO_METRICS;
  client = client || require('prom-client');
  const registers = [new client.Registry()];
  // process_resident_memory_bytes, process_cpu_seconds_total, nodejs_eventloop_lag_seconds, ...
  client.collectDefaultMetrics({ register: registers[0] });
  const duration = new client.Histogram({
    name: 'http_server_request_duration_seconds',
    help: 'Time from request to reply, seconds',
    labelNames: ['http_request_method', 'http_route', 'http_response_status_code', 'op'],
    buckets: DURATION_BUCKETS,
    registers,
  });
  const active = new client.Gauge({
    name: 'http_server_active_requests',
    help: 'Requests being answered now (not /metrics)',
    registers,
  });
  const counter = (name, help, labelNames) => new client.Counter({ name, help, labelNames, registers });
  const bodyIn = counter('http_server_request_body_size_bytes_total', 'Request body bytes read (/process)', ['op']);
  const bodyOut = counter(
    'http_server_response_body_size_bytes_total',
    'Response body bytes (as Content-Length declares)',
    ['op'],
  );
  const rejections = counter('worker_rejections_total', '/process requests refused with 503', ['reason']);
  const decodeFailures = counter('worker_decode_failures_total', 'Images refused by sniff or decode', ['reason']);
  REJECTION_REASONS.forEach((reason) => rejections.labels(reason).inc(0)); // every reason shown, at 0
  DECODE_FAILURE_REASONS.forEach((reason) => decodeFailures.labels(reason).inc(0));

  const middleware = countRequests({ duration, active, bodyIn, bodyOut });

  /** GET /metrics: Prometheus text, from memory (no token: SECURITY.md). */
  const route = async (req, res) => {
    res.set('Content-Type', registers[0].contentType);
    res.send(await registers[0].metrics());
  };

  return {
    middleware,
    route,
    rejected: (reason) => rejections.labels(reason).inc(),
    decodeFailed: (reason) => decodeFailures.labels(reason).inc(),
  };
}

module.exports = { createMetrics, DURATION_BUCKETS };
