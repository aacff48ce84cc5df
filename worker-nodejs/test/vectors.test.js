'use strict';
// The shared cross-runtime vectors (tests/vectors, made from numpy and Pillow) through
// decode.js and ops.js directly: the ops, blur against Pillow's GaussianBlur, and the error inputs.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { decodeImage } = require('../decode');
const { applyOperation } = require('../ops');

const VECTORS = path.join(__dirname, '..', '..', 'tests', 'vectors');
const manifestPath = path.join(VECTORS, 'manifest.json');
const manifest = fs.existsSync(manifestPath) ? JSON.parse(fs.readFileSync(manifestPath, 'utf8')) : null;
const skip = manifest ? false : 'tests/vectors/manifest.json is not in this checkout';
const read = (...parts) => fs.readFileSync(path.join(VECTORS, ...parts));

for (const c of manifest ? manifest.cases : []) {
  test(`vector ${c.input} ${c.op} ${JSON.stringify(c.params)}`, async () => {
    const got = await decodeImage(read('inputs', c.input), { maxPixels: 1e6 });
    applyOperation(got, c.op, c.params);
    const want = await decodeImage(read(c.expected), { maxPixels: 1e6 });
    assert.deepEqual([got.width, got.height], [want.width, want.height]);
    let worst = 0;
    let total = 0;
    for (let i = 0; i < got.data.length; i += 1) {
      const diff = Math.abs(got.data[i] - want.data[i]);
      worst = Math.max(worst, diff);
      total += diff;
    }
    assert.ok(worst <= c.tolerance, `max |diff| ${worst} > ${c.tolerance}`);
    if (c.mean_tolerance) assert.ok(total / got.data.length <= c.mean_tolerance);
  });
}

for (const e of manifest ? manifest.errors : []) {
  test(`error vector ${e.input} -> ${e.status} ${e.code}`, async () => {
    await assert.rejects(decodeImage(read('inputs', e.input), { maxPixels: 50_000_000 }), {
      code: e.code,
      status: e.status,
    });
  });
}

test('blur vectors exist (blur is advertised only because it matches Pillow)', { skip }, () => {
  assert.ok(manifest.cases.some((c) => c.op === 'blur'));
});
