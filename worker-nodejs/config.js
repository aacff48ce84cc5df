'use strict';
// Every WORKER_* setting is read here, once, and nowhere else.

const LOG_LEVELS = ['debug', 'info', 'warning', 'error'];

class ConfigError extends Error {}

function readInteger(env, name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const text = raw.trim();
  if (!/^[+-]?\d+$/.test(text)) {
    throw new ConfigError(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  }
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be between ${min} and ${max}, got ${text}`);
  }
  return value;
}

function readNumber(env, name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const text = raw.trim();
  const value = /^[+-]?(\d+\.?\d*|\.\d+)$/.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(value)) {
    throw new ConfigError(`${name} must be a number, got ${JSON.stringify(raw)}`);
  }
  if (value < min || value > max) {
    throw new ConfigError(`${name} must be between ${min} and ${max}, got ${text}`);
  }
  return value;
}

function readChoice(env, name, fallback, choices) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = raw.trim().toLowerCase();
  if (!choices.includes(value)) {
    throw new ConfigError(`${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function readText(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  if (/[\r\n]/.test(raw)) throw new ConfigError(`${name} must be one line`);
  return raw.trim();
}

/**
 * The secret files' paths (read by secrets.js): both TLS files or neither, a client CA only
 * with them, and the token either inline (WORKER_TOKEN) or in a file, not both.
 */
function readSecretPaths(env) {
  const paths = {
    tokenFile: readText(env, 'WORKER_TOKEN_FILE', null),
    tlsCert: readText(env, 'WORKER_TLS_CERT', null),
    tlsKey: readText(env, 'WORKER_TLS_KEY', null),
    tlsClientCa: readText(env, 'WORKER_TLS_CLIENT_CA', null),
  };
  if (paths.tokenFile && env.WORKER_TOKEN) {
    throw new ConfigError('WORKER_TOKEN and WORKER_TOKEN_FILE are both set; set one of them');
  }
  if (Boolean(paths.tlsCert) !== Boolean(paths.tlsKey)) {
    const [set, missing] = paths.tlsCert
      ? ['WORKER_TLS_CERT', 'WORKER_TLS_KEY']
      : ['WORKER_TLS_KEY', 'WORKER_TLS_CERT'];
    throw new ConfigError(`${missing} must be set together with ${set}`);
  }
  if (paths.tlsClientCa && !paths.tlsCert) {
    throw new ConfigError('WORKER_TLS_CLIENT_CA needs WORKER_TLS_CERT and WORKER_TLS_KEY (mutual TLS is TLS)');
  }
  return paths;
}

/** The worker's settings from the environment; throws ConfigError naming the bad variable. */
function loadConfig(env = process.env) {
  return Object.freeze({
    ...readSecretPaths(env),
    host: readText(env, 'WORKER_HOST', '127.0.0.1'),
    port: readInteger(env, 'WORKER_PORT', 5002, 0, 65535),
    // An empty token means "no token", as if unset.
    token: env.WORKER_TOKEN ? env.WORKER_TOKEN : null,
    maxBytes: readInteger(env, 'WORKER_MAX_BYTES', 50_000_000, 1, Number.MAX_SAFE_INTEGER),
    maxPixels: readInteger(env, 'WORKER_MAX_PIXELS', 50_000_000, 1, Number.MAX_SAFE_INTEGER),
    maxInflight: readInteger(env, 'WORKER_MAX_INFLIGHT', 4, 1, 10_000),
    // The sum of the declared pixels of requests in flight (a lone request is always admitted).
    maxInflightPixels: readInteger(env, 'WORKER_MAX_INFLIGHT_PIXELS', 100_000_000, 1, Number.MAX_SAFE_INTEGER),
    graceSeconds: readNumber(env, 'WORKER_GRACE_SECONDS', 20, 0, 3600),
    build: readText(env, 'WORKER_BUILD', 'dev'),
    logLevel: readChoice(env, 'WORKER_LOG_LEVEL', 'info', LOG_LEVELS),
    // WORKER_METRICS=off is for benchmarking the metrics' own cost only: no prom-client, no /metrics.
    metrics: readChoice(env, 'WORKER_METRICS', 'on', ['on', 'off']) === 'on',
  });
}

module.exports = { loadConfig, ConfigError, LOG_LEVELS };
