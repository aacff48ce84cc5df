'use strict';
// The module map holds: every module ships in the Docker image and is named in the README's
// module map; the pixel modules never reach the HTTP layer, config or the network.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const TOOLING = ['eslint.config.js'];
const modules = fs
  .readdirSync(ROOT)
  .filter((name) => name.endsWith('.js') && !TOOLING.includes(name))
  .sort();
const read = (name) => fs.readFileSync(path.join(ROOT, name), 'utf8');
const requires = (name) => [...read(name).matchAll(/require\('([^']+)'\)/g)].map((m) => m[1]);

test('the Dockerfile copies every module, and only modules that exist', () => {
  const copy = read('Dockerfile').match(/^COPY (config\.js[^]*?) \.\/$/m);
  assert.ok(copy, 'no COPY line for the modules');
  const copied = copy[1]
    .split(/[\s\\]+/)
    .filter(Boolean)
    .sort();
  assert.deepEqual(copied, modules);
});

test("the README's module map names every module", () => {
  const readme = read('README.md');
  const mapSection = readme.slice(readme.indexOf('## Module map'), readme.indexOf('## Run'));
  for (const name of modules) assert.ok(mapSection.includes(`\`${name}\``), `${name} missing from the module map`);
});

test('pixel modules require no HTTP, config, log or state module', () => {
  const forbidden = ['express', 'busboy', 'node:http', 'node:net', './config', './log', './state', './app', './params'];
  for (const name of ['sniff.js', 'decode.js', 'bmp.js', 'ops.js', 'encode.js', 'steps.js']) {
    const bad = requires(name).filter((dep) => forbidden.includes(dep));
    assert.deepEqual(bad, [], `${name} requires ${bad.join(', ')}`);
  }
});
