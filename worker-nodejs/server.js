'use strict';
// The entry point and the only place that binds a port.

const v8 = require('node:v8');
const vm = require('node:vm');

const { loadConfig, ConfigError } = require('./config');
const { createLogger } = require('./log');
const { loadSecrets } = require('./secrets');

/**
 * A full GC after a request that moved megabytes. Its Buffers live outside the V8 heap, so
 * V8 alone lets tens of MB of dead images pile up before collecting; on a 1 GiB machine we
 * would rather spend ~2 ms per large request. Falls back to a no-op if the flag is refused.
 */
function collectGarbage() {
  try {
    // Each large request's Buffers also count as "external memory pressure". Once the heap's old
    // generation is past V8's 8 MB incremental-marking threshold (prom-client's ~0.6 MB put it
    // there; any 1 MB of live objects does too), every such event started an incremental
    // mark-compact beside the full GC below: 20 vs 9 mark-compacts over 6 requests and ~30 ms
    // more CPU per 6 MP strip (half a 12 MP job). Without incremental marking V8 answers the
    // pressure with a scavenge (test/server.test.js).
    v8.setFlagsFromString('--no-incremental-marking');
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc');
    return typeof gc === 'function' ? () => gc() : () => {};
  } catch {
    return () => {};
  }
}

/**
 * Last resort only: every stream and promise in the worker has its own error handling. An
 * unhandled rejection is logged and the worker goes on; an uncaught exception leaves the
 * process in an unknown state, so it is logged and the process exits 1 (systemd restarts it).
 */
function lastResortLogging(logger) {
  const line = (err) =>
    String(err && err.stack ? err.stack : err)
      .replace(/\s+/g, ' ')
      .slice(0, 2000);
  process.on('unhandledRejection', (err) => logger.error('unhandled rejection', { error: line(err) }));
  process.on('uncaughtException', (err) => {
    logger.error('uncaught exception, exiting', { error: line(err) });
    process.exit(1);
  });
}

/** `load()`'s value (the settings, the secrets), or exit 2 with a one-line error naming the bad variable. */
function orExit(load) {
  try {
    return load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`error: ${err.message}\n`);
    return process.exit(2);
  }
}

// Pending connections the kernel queues for us: Node's default (511) filled while 1000 idle
// connections were being renewed and a health probe's SYN waited 1 s for a retransmit.
// gunicorn's default is the same 2048.
const LISTEN_BACKLOG = 2048;

function listen(server, config, secrets, logger) {
  server.on('error', (err) => {
    process.stderr.write(`error: cannot listen on ${config.host}:${config.port}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen({ port: config.port, host: config.host, backlog: LISTEN_BACKLOG }, () => {
    const { port } = server.address();
    logger.info('listening', {
      host: config.host,
      port,
      build: config.build,
      max_inflight: config.maxInflight,
      max_bytes: config.maxBytes,
      max_pixels: config.maxPixels,
      max_inflight_pixels: config.maxInflightPixels,
      token_required: Boolean(secrets.tokens()),
      tls: secrets.tls,
      mutual_tls: secrets.mutualTls,
    });
  });
}

/**
 * On SIGTERM/SIGINT: stop admitting, keep listening while requests are in flight (so new
 * callers get a clear 503 draining, and /healthz says so, instead of a refused connection),
 * then close and exit 0; exit 1 once the grace period is over.
 */
function drainOnSignals(server, worker, config, logger, tracing) {
  let stopping = false;
  const stop = async (signal) => {
    if (stopping) return;
    stopping = true;
    worker.startDraining();
    logger.info('draining', { signal, inflight: worker.inflight, grace_seconds: config.graceSeconds });
    const force = setTimeout(() => {
      logger.error('grace period over, exiting with requests still in flight', { inflight: worker.inflight });
      process.exit(1);
    }, config.graceSeconds * 1000);
    await worker.whenIdle();
    server.close(async () => {
      clearTimeout(force);
      await tracing.shutdown().catch(() => {}); // the last spans go out (tracing on) before exit
      logger.info('stopped', { signal });
      process.exit(0);
    });
    server.closeIdleConnections();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/** Changed secret files apply to new requests and handshakes; open connections keep theirs. */
function watchSecrets(server, secrets, logger) {
  // Scanners and plain-HTTP callers end here; at debug, so they cannot flood the log.
  if (secrets.tls) server.on('tlsClientError', (err) => logger.debug('tls handshake failed', { reason: err.code }));
  secrets.watch((tlsOptions) => server.setSecureContext(tlsOptions));
}

function main() {
  const config = orExit(() => loadConfig(process.env));
  const logger = createLogger({ level: config.logLevel });
  const secrets = orExit(() => loadSecrets(config, { logger }));
  // Each request's libvips pipelines run on libuv's thread pool (default 4 threads): leave
  // room beyond WORKER_MAX_INFLIGHT for the health self-check, so it is never queued behind
  // every request. libuv reads this when the pool starts, which loading sharp does: so sharp
  // and the app (which loads it) are required only after this line.
  process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, Math.max(4, config.maxInflight + 2)));
  const sharp = require('sharp');
  const { buildApp } = require('./app');
  const { createServer } = require('./transport');
  const tracing = require('./tracing').createTracing();
  lastResortLogging(logger);

  // A t2.micro has 1 GiB: libvips' operation cache only holds memory we never reuse,
  // and one libvips thread per request keeps concurrent requests from multiplying buffers.
  sharp.cache(false);
  sharp.concurrency(1);

  const app = buildApp(config, { logger, afterLargeRequest: collectGarbage(), tracing, secrets });
  const server = createServer(app, secrets.tlsOptions());
  watchSecrets(server, secrets, logger);
  listen(server, config, secrets, logger);
  drainOnSignals(server, app.locals.worker, config, logger, tracing);
}

main();
