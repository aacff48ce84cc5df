'use strict';
// The secret files (secrets.js, config.js): what start-up accepts and refuses (exit 2, one line,
// never a secret), and the reload pass: a changed file is picked up, a broken one keeps the
// previous material and logs one error line.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { loadConfig, ConfigError } = require('../config');
const { loadSecrets, parseTokens, SecretError } = require('../secrets');
const { createLogger } = require('../log');
const { tempFolder, authority } = require('./certs');

const SECRET = 'Zq7secretTokenValue';

function quietLogger() {
  const lines = [];
  const logger = createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line)) });
  return { logger, lines };
}

/** A folder with a CA, a server pair, a second CA's pair and a token file; removed after the test. */
function materials(t) {
  const { folder, cleanup } = tempFolder();
  t.after(cleanup);
  const ca = authority(folder, 'ca');
  const other = authority(folder, 'other-ca');
  const tokenFile = path.join(folder, 'worker-token');
  fs.writeFileSync(tokenFile, `${SECRET}\n`);
  return { folder, ca, server: ca.issue('server'), foreign: other.issue('foreign'), tokenFile };
}

// ---------------------------------------------------------------- config and token syntax

test('the secret paths are read from WORKER_TOKEN_FILE and WORKER_TLS_*; none by default', () => {
  const none = loadConfig({});
  assert.deepEqual([none.tokenFile, none.tlsCert, none.tlsKey, none.tlsClientCa], [null, null, null, null]);
  const all = loadConfig({
    WORKER_TOKEN_FILE: '/t',
    WORKER_TLS_CERT: '/c',
    WORKER_TLS_KEY: '/k',
    WORKER_TLS_CLIENT_CA: '/a',
  });
  assert.deepEqual([all.tokenFile, all.tlsCert, all.tlsKey, all.tlsClientCa], ['/t', '/c', '/k', '/a']);
});

const BAD_COMBINATIONS = [
  [{ WORKER_TLS_CERT: '/c' }, /^WORKER_TLS_KEY must be set together with WORKER_TLS_CERT$/],
  [{ WORKER_TLS_KEY: '/k' }, /^WORKER_TLS_CERT must be set together with WORKER_TLS_KEY$/],
  [{ WORKER_TLS_CLIENT_CA: '/a' }, /^WORKER_TLS_CLIENT_CA needs WORKER_TLS_CERT/],
  [{ WORKER_TOKEN: SECRET, WORKER_TOKEN_FILE: '/t' }, /^WORKER_TOKEN and WORKER_TOKEN_FILE are both set/],
];

for (const [env, message] of BAD_COMBINATIONS) {
  test(`config refuses ${Object.keys(env).join(' + ')}`, () => {
    assert.throws(
      () => loadConfig(env),
      (err) => err instanceof ConfigError && message.test(err.message),
    );
  });
}

test('a token file holds 1 or 2 tokens, one per line; blanks and surrounding whitespace are ignored', () => {
  assert.deepEqual(parseTokens('abc\n'), ['abc']);
  assert.deepEqual(parseTokens('\n  current-1 \r\n\n\tnext.2\n\n'), ['current-1', 'next.2']);
});

const BAD_TOKEN_FILES = [
  ['', /holds no token/],
  [' \n\n\t\n', /holds no token/],
  [`a\nb\n${SECRET}\n`, /holds 3 tokens; at most 2/],
  [`${SECRET}\x01x\n`, /printable ASCII/],
  [`${SECRET}é\n`, /printable ASCII/],
  [`${SECRET} x\n`, /no spaces/],
  [`${'x'.repeat(4097)}\n`, /1-4096/],
];

for (const [text, reason] of BAD_TOKEN_FILES) {
  test(`token file ${JSON.stringify(text.slice(0, 12))}... is refused without quoting a token`, () => {
    assert.throws(
      () => parseTokens(text),
      (err) => err instanceof SecretError && reason.test(err.message) && !err.message.includes(SECRET.slice(0, 6)),
    );
  });
}

// ---------------------------------------------------------------- start-up

test('tokens come from the file, from WORKER_TOKEN, or none is required', (t) => {
  const { tokenFile } = materials(t);
  const { logger } = quietLogger();
  assert.deepEqual(loadSecrets(loadConfig({ WORKER_TOKEN_FILE: tokenFile }), { logger }).tokens(), [SECRET]);
  assert.deepEqual(loadSecrets(loadConfig({ WORKER_TOKEN: 'inline' }), { logger }).tokens(), ['inline']);
  const plain = loadSecrets(loadConfig({}), { logger });
  assert.equal(plain.tokens(), null);
  assert.equal(plain.tls, false);
  assert.equal(plain.tlsOptions(), null);
});

test('TLS files give TLS 1.2+ server options; a client CA turns on mutual TLS', (t) => {
  const { ca, server } = materials(t);
  const { logger } = quietLogger();
  const secrets = loadSecrets(
    loadConfig({ WORKER_TLS_CERT: server.cert, WORKER_TLS_KEY: server.key, WORKER_TLS_CLIENT_CA: ca.cert }),
    { logger },
  );
  assert.equal(secrets.tls, true);
  assert.equal(secrets.mutualTls, true);
  const options = secrets.tlsOptions();
  assert.equal(options.minVersion, 'TLSv1.2');
  assert.equal(options.cert, fs.readFileSync(server.cert, 'utf8'));
  assert.equal(options.ca, fs.readFileSync(ca.cert, 'utf8'));
});

/** Each case: env (given the materials) -> the variable the one-line error must name. */
const BAD_FILES = [
  ['a missing token file', (m) => ({ WORKER_TOKEN_FILE: path.join(m.folder, 'nope') }), 'WORKER_TOKEN_FILE'],
  [
    'a missing certificate',
    (m) => ({ WORKER_TLS_CERT: path.join(m.folder, 'nope'), WORKER_TLS_KEY: m.server.key }),
    'WORKER_TLS_CERT',
  ],
  ['a key that is not PEM', (m) => ({ WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.tokenFile }), 'WORKER_TLS_KEY'],
  [
    'a certificate that is a key',
    (m) => ({ WORKER_TLS_CERT: m.server.key, WORKER_TLS_KEY: m.server.key }),
    'WORKER_TLS_CERT',
  ],
  [
    'a key of another certificate',
    (m) => ({ WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.foreign.key }),
    'WORKER_TLS_KEY',
  ],
  [
    'a client CA that is not PEM',
    (m) => ({ WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.server.key, WORKER_TLS_CLIENT_CA: m.tokenFile }),
    'WORKER_TLS_CLIENT_CA',
  ],
];

for (const [what, envOf, variable] of BAD_FILES) {
  test(`start-up refuses ${what}, naming ${variable}`, (t) => {
    const env = envOf(materials(t));
    const { logger } = quietLogger();
    assert.throws(
      () => loadSecrets(loadConfig(env), { logger }),
      (err) =>
        err instanceof ConfigError &&
        err.message.startsWith(`${variable}: `) &&
        !err.message.includes('BEGIN') &&
        !err.message.includes(SECRET),
    );
  });
}

test('server.js exits 2 with one "error:" line for a bad secret file, never quoting it', (t) => {
  const m = materials(t);
  fs.writeFileSync(m.tokenFile, `a\nb\n${SECRET}\n`);
  const cases = [
    [{ WORKER_TOKEN_FILE: m.tokenFile }, /^error: WORKER_TOKEN_FILE: the file holds 3 tokens/],
    [{ WORKER_TLS_CERT: m.server.cert, WORKER_TLS_KEY: m.foreign.key }, /^error: WORKER_TLS_KEY: /],
    [{ WORKER_TLS_CLIENT_CA: m.server.cert }, /^error: WORKER_TLS_CLIENT_CA needs /],
  ];
  for (const [env, line] of cases) {
    const result = spawnSync(process.execPath, [path.join(__dirname, '..', 'server.js')], {
      env: { ...process.env, WORKER_PORT: '0', ...env },
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(result.status, 2, result.stderr);
    const lines = result.stderr.trim().split('\n');
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0], line);
    assert.ok(!result.stderr.includes(SECRET) && !result.stderr.includes('BEGIN'));
  }
});

// ---------------------------------------------------------------- reload

test('a changed token file is picked up by the next check; an unchanged one logs nothing', (t) => {
  const { tokenFile } = materials(t);
  const { logger, lines } = quietLogger();
  const secrets = loadSecrets(loadConfig({ WORKER_TOKEN_FILE: tokenFile }), { logger });
  secrets.check();
  assert.equal(lines.length, 0);
  fs.writeFileSync(tokenFile, `${SECRET}\nnext-token-2\n`);
  secrets.check();
  assert.deepEqual(secrets.tokens(), [SECRET, 'next-token-2']);
  assert.deepEqual(
    lines.map((line) => [line.level, line.msg]),
    [['info', 'secrets reloaded']],
  );
  fs.writeFileSync(tokenFile, 'next-token-2\n');
  secrets.check();
  assert.deepEqual(secrets.tokens(), ['next-token-2']);
});

test('a broken token file keeps the previous tokens and logs one error line, once', (t) => {
  const { tokenFile } = materials(t);
  const { logger, lines } = quietLogger();
  const secrets = loadSecrets(loadConfig({ WORKER_TOKEN_FILE: tokenFile }), { logger });
  for (const broken of ['\n', 'a\nb\nc\n']) {
    lines.length = 0;
    fs.writeFileSync(tokenFile, broken);
    secrets.check();
    secrets.check();
    assert.deepEqual(secrets.tokens(), [SECRET]);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0].level, 'error');
    assert.match(lines[0].msg, /^secrets reload failed: WORKER_TOKEN_FILE: .*; keeping the previous ones$/);
  }
  fs.rmSync(tokenFile);
  secrets.check();
  assert.deepEqual(secrets.tokens(), [SECRET], 'a missing file keeps the tokens too');
});

test('TLS files: a half-written pair keeps the old context; the whole new pair replaces it', (t) => {
  const { server, foreign } = materials(t);
  const { logger, lines } = quietLogger();
  const secrets = loadSecrets(loadConfig({ WORKER_TLS_CERT: server.cert, WORKER_TLS_KEY: server.key }), { logger });
  const applied = [];
  secrets.watch((options) => applied.push(options), 3_600_000);
  t.after(secrets.stop);
  const before = secrets.tlsOptions();
  fs.copyFileSync(foreign.cert, server.cert); // the certificate lands first, the key a moment later
  secrets.check();
  assert.equal(secrets.tlsOptions(), before);
  assert.equal(applied.length, 0);
  assert.match(lines.at(-1).msg, /^secrets reload failed: WORKER_TLS_KEY: the key does not belong to the certificate/);
  fs.copyFileSync(foreign.key, server.key);
  secrets.check();
  assert.equal(applied.length, 1);
  assert.equal(applied[0].cert, fs.readFileSync(foreign.cert, 'utf8'));
  assert.equal(applied[0].minVersion, 'TLSv1.2');
  assert.equal(lines.at(-1).msg, 'secrets reloaded');
  assert.ok(lines.every((line) => !JSON.stringify(line).includes('BEGIN')));
});
