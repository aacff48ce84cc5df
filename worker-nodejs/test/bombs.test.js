'use strict';
// Decode bombs and formats of the round-2 rules (4 and 5) through sniff.js and decode.js: JPEG scan count,
// PNG compressed chunks, RLE BMPs (complete, truncated, declared huge with no data), P5 PGM,
// and the stepped (event-loop friendly) ops giving the same bytes as the plain ones.

const test = require('node:test');
const assert = require('node:assert/strict');
const zlib = require('node:zlib');
const sharp = require('sharp');

const { decodeBomb } = require('../sniff');
const bmpFiles = require('./bmp');
const { decodeImage } = require('../decode');
const { applyOperation, applyOperationAsync } = require('../ops');

const decode = (buf, maxPixels = 50_000_000) => decodeImage(buf, { maxPixels });

/** A progressive JPEG cut into: head (up to the first SOS), the scans, and EOI. */
async function progressiveJpeg() {
  const jpeg = await sharp(Buffer.alloc(16 * 16 * 3, 90), { raw: { width: 16, height: 16, channels: 3 } })
    .jpeg({ progressive: true })
    .toBuffer();
  const firstScan = jpeg.indexOf(Buffer.from([0xff, 0xda]));
  return { jpeg, head: jpeg.subarray(0, firstScan), scans: jpeg.subarray(firstScan, jpeg.length - 2) };
}

test('rule 5: a JPEG with more than 100 scans is bad_image before decoding; 100 pass the guard', async () => {
  const { jpeg, head, scans } = await progressiveJpeg();
  assert.equal(decodeBomb(jpeg, 'jpeg'), null);
  const scan = scans.subarray(0, scans.indexOf(Buffer.from([0xff, 0xda]), 2)); // the first scan alone
  const withScans = (n) => Buffer.concat([head, ...Array(n).fill(scan), Buffer.from([0xff, 0xd9])]);
  assert.equal(decodeBomb(withScans(100), 'jpeg'), null);
  assert.match(decodeBomb(withScans(101), 'jpeg'), /more than 100 scans/);
  await assert.rejects(decode(withScans(3000)), { code: 'bad_image', status: 400, message: /scans/ });
});

function pngChunk(type, data) {
  const kind = Buffer.from(type, 'latin1');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(Buffer.concat([kind, data])));
  return Buffer.concat([length, kind, data, crc]);
}

/** `png` with `chunk` inserted after IHDR. */
const withChunk = (png, chunk) => Buffer.concat([png.subarray(0, 33), chunk, png.subarray(33)]);

test('rule 5: zTXt, iCCP and compressed iTXt inflating past 1 MiB are bad_image; 1 MiB is fine', async () => {
  const png = await sharp(Buffer.alloc(4 * 4 * 3, 50), { raw: { width: 4, height: 4, channels: 3 } })
    .png()
    .toBuffer();
  const deflated = (size) => zlib.deflateSync(Buffer.alloc(size, 0x41));
  const over = deflated(1024 * 1024 + 1);
  const bombs = {
    zTXt: pngChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0'), over])),
    iCCP: pngChunk('iCCP', Buffer.concat([Buffer.from('icc\0\0'), over])),
    iTXt: pngChunk('iTXt', Buffer.concat([Buffer.from('Comment\0\x01\0en\0\0'), over])),
  };
  for (const [type, chunk] of Object.entries(bombs)) {
    await assert.rejects(decode(withChunk(png, chunk)), { code: 'bad_image', message: new RegExp(type) }, type);
  }
  const fits = pngChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0'), deflated(1024 * 1024)]));
  assert.equal(decodeBomb(withChunk(png, fits), 'png'), null);
  const plainItxt = pngChunk(
    'iTXt',
    Buffer.concat([Buffer.from('Comment\0\0\0en\0\0'), Buffer.alloc(2_000_000, 0x41)]),
  );
  assert.equal(decodeBomb(withChunk(png, plainItxt), 'png'), null, 'an uncompressed iTXt is not inflated');
});

/** An 8-bit RLE BMP (bottom-up) with a 4-entry palette: index i is (10i, 20i, 30i). */
function rle8Bmp(width, height, codes) {
  const palette = Buffer.alloc(4 * 4);
  for (let i = 0; i < 4; i += 1) palette.set([30 * i, 20 * i, 10 * i, 0], i * 4); // B, G, R, X
  return bmpFiles.rle8Bmp(width, height, palette, codes, 4);
}

const color = (i) => [10 * i, 20 * i, 30 * i];

test('RLE8 BMP decodes as Pillow does: runs, absolute runs, end of line fill, delta', async () => {
  // 4x3, file rows bottom first. Row 0 (bottom): run of 3 x index 1, then EOL (fill index 0).
  // Row 1: absolute 3 pixels (2, 3, 1) + pad byte, run of 1 x 2. Row 2: delta right 2, run of 2 x 3.
  const codes = [3, 1, 0, 0, 0, 3, 2, 3, 1, 0, 1, 2, 0, 2, 2, 0, 2, 3, 0, 1];
  const decoded = await decode(rle8Bmp(4, 3, codes));
  const rows = [
    [0, 0, 3, 3], // top = file row 2
    [2, 3, 1, 2],
    [1, 1, 1, 0], // bottom = file row 0
  ];
  assert.deepEqual([...decoded.data], rows.flat().flatMap(color));
});

test('issue 11 item 5 / rule 5: RLE BMPs that end early are bad_image, even when declared 7000x7000', async () => {
  const cases = {
    'no data at all, 7000x7000': rle8Bmp(7000, 7000, [0, 1]),
    'end of bitmap after one row': rle8Bmp(4, 3, [4, 1, 0, 0, 0, 1]),
    'data stops mid-row': rle8Bmp(4, 3, [4, 1, 0, 0, 2, 2]),
    'absolute run cut short': rle8Bmp(4, 1, [0, 4, 1, 2]),
  };
  for (const [what, bmp] of Object.entries(cases)) {
    await assert.rejects(decode(bmp), { code: 'bad_image', status: 400 }, what);
  }
});

test('rule 4: P5 PGM, 8- and 16-bit, becomes R=G=B', async () => {
  const eight = Buffer.concat([Buffer.from('P5\n3 1\n255\n'), Buffer.from([0, 128, 255])]);
  assert.deepEqual([...(await decode(eight)).data], [0, 0, 0, 128, 128, 128, 255, 255, 255]);
  const sixteen = Buffer.concat([Buffer.from('P5\n2 1\n65535\n'), Buffer.from([0x12, 0x34, 0xff, 0xff])]);
  assert.deepEqual([...(await decode(sixteen)).data], [0x12, 0x12, 0x12, 0xff, 0xff, 0xff]);
});

test('issue 11 item 5: stepped ops give the same bytes as the plain ones, and yield between steps', async () => {
  const width = 700;
  const height = 600; // > one step of bytes, so the loop is really cut
  const source = Buffer.alloc(width * height * 3);
  for (let i = 0; i < source.length; i += 1) source[i] = (i * 7919) % 251;
  for (const [op, params] of [
    ['grayscale', {}],
    ['sepia', {}],
    ['invert', {}],
    ['blur', { radius: 3 }],
  ]) {
    const plain = applyOperation({ width, height, data: Buffer.from(source) }, op, params);
    let pauses = 0;
    const stepped = await applyOperationAsync({ width, height, data: Buffer.from(source) }, op, params, async () => {
      pauses += 1;
    });
    assert.ok(stepped.data.equals(plain.data), op);
    assert.ok(pauses >= 1, `${op} paused ${pauses} times`);
  }
});
