'use strict';
// The secrets kept in files: the bearer tokens of WORKER_TOKEN_FILE and the TLS material of
// WORKER_TLS_CERT / WORKER_TLS_KEY / WORKER_TLS_CLIENT_CA. Read at start (a bad file stops
// start-up), then re-read when a file changes: a cheap stat at most once a second, and a
// broken new file keeps the previous material. No message ever quotes a secret.

const crypto = require('node:crypto');
const fs = require('node:fs');
const tls = require('node:tls');

const { ConfigError } = require('./config');

const MAX_TOKENS = 2; // the current one, and the next one during a rotation
const MAX_FILE_BYTES = 1024 * 1024;
const CHECK_EVERY_MS = 1_000;
const TOKEN = /^[\x21-\x7e]{1,4096}$/; // printable ASCII without spaces, as worker-python
const MIN_TLS_VERSION = 'TLSv1.2';

/** Why a secret file cannot be used; `variable` names the setting, the message never a value. */
class SecretError extends Error {
  constructor(variable, reason) {
    super(`${variable}: ${reason}`);
    this.variable = variable;
  }
}

/** The bytes of open file `fd`, at most `limit` + 1 of them (one more tells a file that grew past it). */
function readAtMost(fd, limit) {
  const buffer = Buffer.alloc(limit + 1);
  let length = 0;
  let read;
  while (length < buffer.length && (read = fs.readSync(fd, buffer, length, buffer.length - length, null)) > 0) {
    length += read;
  }
  return buffer.subarray(0, length);
}

/**
 * A regular file of at most MAX_FILE_BYTES, as text. Opened without blocking and checked before
 * reading: a FIFO put in its place would stall the event loop in open(), a device (/dev/zero)
 * would never end, a huge file would be read whole.
 */
function readSecretFile(variable, path) {
  let fd;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw new SecretError(variable, `cannot read ${path}: ${err.code || err.message}`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new SecretError(variable, `${path} is not a regular file`);
    const data = stat.size <= MAX_FILE_BYTES ? readAtMost(fd, MAX_FILE_BYTES) : null;
    if (data === null || data.length > MAX_FILE_BYTES) {
      throw new SecretError(variable, `${path} is over ${MAX_FILE_BYTES} bytes`);
    }
    return data.toString('utf8');
  } catch (err) {
    if (err instanceof SecretError) throw err;
    throw new SecretError(variable, `cannot read ${path}: ${err.code || err.message}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** The 1 or 2 tokens of a token file: one per line, surrounding whitespace and empty lines ignored. */
function parseTokens(text) {
  const tokens = text
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  if (tokens.length === 0) throw new SecretError('WORKER_TOKEN_FILE', 'the file holds no token');
  if (tokens.length > MAX_TOKENS) {
    throw new SecretError('WORKER_TOKEN_FILE', `the file holds ${tokens.length} tokens; at most ${MAX_TOKENS}`);
  }
  if (!tokens.every((token) => TOKEN.test(token))) {
    throw new SecretError('WORKER_TOKEN_FILE', 'a token is not 1-4096 printable ASCII characters (no spaces)');
  }
  return Object.freeze(tokens);
}

function parsePem(variable, what, parse) {
  try {
    return parse();
  } catch {
    throw new SecretError(variable, `not a PEM ${what}`);
  }
}

/**
 * Checked TLS server options: the certificate parses, the key parses and belongs to it (OpenSSL
 * alone would drop a mismatched key silently and fail every handshake), the client CA parses.
 */
function parseTls({ certPem, keyPem, caPem }) {
  const cert = parsePem('WORKER_TLS_CERT', 'certificate', () => new crypto.X509Certificate(certPem));
  const key = parsePem('WORKER_TLS_KEY', 'private key (or it is encrypted)', () => crypto.createPrivateKey(keyPem));
  if (!cert.checkPrivateKey(key)) {
    throw new SecretError('WORKER_TLS_KEY', 'the key does not belong to the certificate in WORKER_TLS_CERT');
  }
  if (caPem !== undefined) parsePem('WORKER_TLS_CLIENT_CA', 'certificate', () => new crypto.X509Certificate(caPem));
  const options = { cert: certPem, key: keyPem, minVersion: MIN_TLS_VERSION };
  if (caPem !== undefined) options.ca = caPem;
  try {
    tls.createSecureContext(options);
  } catch (err) {
    throw new SecretError('WORKER_TLS_CERT', `the TLS files are not usable: ${String(err.message).slice(0, 200)}`);
  }
  return Object.freeze(options);
}

/** A file's identity for change detection: mtime (ns), size and inode; a missing file has its own. */
function fileStamp(path) {
  try {
    const stat = fs.statSync(path, { bigint: true });
    return `${stat.mtimeNs}:${stat.size}:${stat.ino}`;
  } catch (err) {
    return `missing:${err.code}`;
  }
}

/**
 * A value loaded from the files `paths` ({variable: path}); `refresh()` reloads it when any
 * file's stamp changed and returns the changed variables (none: []), or throws (keeping the
 * previous value) when the new files are broken. The stamps are taken before reading, so a
 * change during the read is seen at the next refresh.
 */
function watchedValue(paths, load) {
  const variables = Object.keys(paths);
  const stampAll = () => variables.map((variable) => fileStamp(paths[variable]));
  let stamps = stampAll();
  let value = load();
  return {
    get value() {
      return value;
    },
    refresh() {
      const now = stampAll();
      const changed = variables.filter((_, i) => now[i] !== stamps[i]);
      stamps = now;
      if (changed.length > 0) value = load();
      return changed;
    },
  };
}

function tokenSource(config) {
  if (!config.tokenFile) return null;
  const paths = { WORKER_TOKEN_FILE: config.tokenFile };
  return watchedValue(paths, () => parseTokens(readSecretFile('WORKER_TOKEN_FILE', config.tokenFile)));
}

function tlsSource(config) {
  if (!config.tlsCert) return null;
  const paths = { WORKER_TLS_CERT: config.tlsCert, WORKER_TLS_KEY: config.tlsKey };
  if (config.tlsClientCa) paths.WORKER_TLS_CLIENT_CA = config.tlsClientCa;
  return watchedValue(paths, () =>
    parseTls({
      certPem: readSecretFile('WORKER_TLS_CERT', config.tlsCert),
      keyPem: readSecretFile('WORKER_TLS_KEY', config.tlsKey),
      caPem: config.tlsClientCa ? readSecretFile('WORKER_TLS_CLIENT_CA', config.tlsClientCa) : undefined,
    }),
  );
}

/** Reloads `source` if its files changed; logs the outcome; true when new material is in use. */
function refreshSource(source, logger) {
  if (!source) return false;
  let changed;
  try {
    changed = source.refresh();
  } catch (err) {
    if (!(err instanceof SecretError)) throw err;
    logger.error(`secrets reload failed: ${err.message}; keeping the previous ones`);
    return false;
  }
  if (changed.length === 0) return false;
  logger.info('secrets reloaded', { files: changed });
  return true;
}

/**
 * The worker's secrets (throws ConfigError naming the variable when a file is unusable):
 * `tokens()` the accepted bearer tokens (null: none required), `tls` whether the port speaks
 * TLS, `tlsOptions()` the current server options, `mutualTls`, `check()` one reload pass,
 * `watch(onTls)` checks every second (onTls gets new TLS options) until `stop()`.
 */
function loadSecrets(config, { logger }) {
  let tokens;
  let certs;
  try {
    tokens = tokenSource(config);
    certs = tlsSource(config);
  } catch (err) {
    if (err instanceof SecretError) throw new ConfigError(err.message);
    throw err;
  }
  const inline = config.token ? Object.freeze([config.token]) : null;
  const listeners = [];
  const check = () => {
    refreshSource(tokens, logger);
    if (!refreshSource(certs, logger)) return;
    try {
      listeners.forEach((onTls) => onTls(certs.value));
    } catch (err) {
      logger.error('secrets reload failed: the TLS server refused the new files', { error: String(err.message) });
    }
  };
  let timer = null;
  return {
    tls: Boolean(certs),
    mutualTls: Boolean(config.tlsClientCa),
    tokens: () => (tokens ? tokens.value : inline),
    tlsOptions: () => (certs ? certs.value : null),
    check,
    watch(onTls = () => {}, everyMs = CHECK_EVERY_MS) {
      listeners.push(onTls);
      timer ??= setInterval(check, everyMs).unref();
    },
    stop: () => clearInterval(timer),
  };
}

module.exports = { loadSecrets, parseTokens, parseTls, SecretError, CHECK_EVERY_MS };
