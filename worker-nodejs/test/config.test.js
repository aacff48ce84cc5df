'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { loadConfig, ConfigError } = require('../config');

test('defaults make the worker run with no config at all', () => {
  assert.deepEqual(
    { ...loadConfig({}) },
    {
      host: '127.0.0.1',
      port: 5002,
      token: null,
      maxBytes: 50_000_000,
      maxPixels: 50_000_000,
      maxInflight: 4,
      maxInflightPixels: 100_000_000,
      graceSeconds: 20,
      build: 'dev',
      logLevel: 'info',
      metrics: true,
      tokenFile: null,
      tlsCert: null,
      tlsKey: null,
      tlsClientCa: null,
    },
  );
});

test('WORKER_METRICS=off turns the metrics off; any other word is refused', () => {
  assert.equal(loadConfig({ WORKER_METRICS: 'OFF' }).metrics, false);
  assert.throws(() => loadConfig({ WORKER_METRICS: 'maybe' }), ConfigError);
});

test('values are read from WORKER_* variables', () => {
  const config = loadConfig({
    WORKER_HOST: '0.0.0.0',
    WORKER_PORT: '0',
    WORKER_TOKEN: 't0k',
    WORKER_MAX_BYTES: '1000',
    WORKER_MAX_PIXELS: '64',
    WORKER_MAX_INFLIGHT: '1',
    WORKER_GRACE_SECONDS: '0.5',
    WORKER_MAX_INFLIGHT_PIXELS: '128',
    WORKER_BUILD: 'abc123',
    WORKER_LOG_LEVEL: 'DEBUG',
  });
  assert.equal(config.host, '0.0.0.0');
  assert.equal(config.port, 0);
  assert.equal(config.token, 't0k');
  assert.equal(config.maxBytes, 1000);
  assert.equal(config.maxPixels, 64);
  assert.equal(config.maxInflight, 1);
  assert.equal(config.maxInflightPixels, 128);
  assert.equal(config.graceSeconds, 0.5);
  assert.equal(config.build, 'abc123');
  assert.equal(config.logLevel, 'debug');
});

const BAD = [
  ['WORKER_PORT', 'http'],
  ['WORKER_PORT', '65536'],
  ['WORKER_PORT', '-1'],
  ['WORKER_PORT', '80.5'],
  ['WORKER_MAX_BYTES', '0'],
  ['WORKER_MAX_BYTES', '1e6'],
  ['WORKER_MAX_PIXELS', 'lots'],
  ['WORKER_MAX_INFLIGHT', '0'],
  ['WORKER_GRACE_SECONDS', '-3'],
  ['WORKER_GRACE_SECONDS', 'soon'],
  ['WORKER_LOG_LEVEL', 'verbose'],
  ['WORKER_BUILD', 'two\nlines'],
];

for (const [name, value] of BAD) {
  test(`bad ${name}=${JSON.stringify(value)} is refused, naming the variable`, () => {
    assert.throws(
      () => loadConfig({ [name]: value }),
      (err) => err instanceof ConfigError && err.message.includes(name),
    );
  });
}

test('server.js exits 2 with one "error:" line naming the variable', () => {
  const result = spawnSync(process.execPath, [path.join(__dirname, '..', 'server.js')], {
    env: { ...process.env, WORKER_MAX_INFLIGHT: 'many', WORKER_PORT: '0' },
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.equal(result.status, 2);
  const lines = result.stderr.trim().split('\n');
  assert.equal(lines.length, 1, result.stderr);
  assert.match(lines[0], /^error: WORKER_MAX_INFLIGHT /);
  assert.equal(result.stdout, '');
});
