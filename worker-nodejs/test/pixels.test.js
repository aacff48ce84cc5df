'use strict';
// sniff/decode/ops/encode on small hand-made buffers: formulas, decoders, limits, encoders.

const test = require('node:test');
const assert = require('node:assert/strict');
const sharp = require('sharp');

const { decodeImage } = require('../decode');
const {
  applyOperation,
  boxRadiusForGaussian,
  boxWeights,
  gaussianBlurInPlace,
  gaussianBlurInPlaceAsync,
  grayscaleInPlace,
  invertInPlace,
  sepiaInPlace,
} = require('../ops');
const { encodeImage, encodePpm, encodeReply } = require('../encode');

const rgb = (...values) => Buffer.from(values);

/** BMP pixel rows (BGR, or BGRX at 32 bits), padded to 4 bytes, bottom-up unless topDown. */
function bmpPixels(width, height, pixelsRgb, bits, topDown) {
  const bytesPerPixel = bits / 8;
  const stride = Math.ceil((width * bytesPerPixel) / 4) * 4;
  const pixels = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y += 1) {
    const fileRow = topDown ? y : height - 1 - y;
    for (let x = 0; x < width; x += 1) {
      const [r, g, b] = pixelsRgb.subarray((y * width + x) * 3, (y * width + x) * 3 + 3);
      const at = fileRow * stride + x * bytesPerPixel;
      pixels[at] = b;
      pixels[at + 1] = g;
      pixels[at + 2] = r;
      if (bits === 32) pixels[at + 3] = 0x80;
    }
  }
  return pixels;
}

/** A BMP file by hand: 40-byte (or larger) info header, bottom-up unless topDown. */
function bmpFile(width, height, pixelsRgb, { bits = 24, topDown = false, infoSize = 40, bitfields = false } = {}) {
  const masks = bitfields ? 12 : 0;
  const dataOffset = 14 + infoSize + (bitfields && infoSize === 40 ? masks : 0);
  const pixels = bmpPixels(width, height, pixelsRgb, bits, topDown);
  const head = Buffer.alloc(dataOffset);
  head.write('BM', 0, 'latin1');
  head.writeUInt32LE(dataOffset + pixels.length, 2);
  head.writeUInt32LE(dataOffset, 10);
  head.writeUInt32LE(infoSize, 14);
  head.writeInt32LE(width, 18);
  head.writeInt32LE(topDown ? -height : height, 22);
  head.writeUInt16LE(1, 26);
  head.writeUInt16LE(bits, 28);
  head.writeUInt32LE(bitfields ? 3 : 0, 30);
  head.writeUInt32LE(pixels.length, 34);
  if (bitfields) {
    head.writeUInt32LE(0xff0000, 54);
    head.writeUInt32LE(0xff00, 58);
    head.writeUInt32LE(0xff, 62);
  }
  return Buffer.concat([head, pixels]);
}

function pngHeaderOnly(width, height) {
  const zlib = require('node:zlib');
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const kind = Buffer.from('IHDR');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(Buffer.concat([kind, ihdr])), 0);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(13, 0);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), length, kind, ihdr, crc]);
}

const sixPixels = rgb(0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 12, 200, 99);

test('grayscale is Pillow L = (19595R + 38470G + 7471B + 32768) >> 16 on every channel', () => {
  const data = Buffer.from(sixPixels);
  grayscaleInPlace(data);
  const expected = [0, 255, 76, 150, 29, 132];
  for (let p = 0; p < 6; p += 1) {
    const [r, g, b] = sixPixels.subarray(p * 3, p * 3 + 3);
    assert.equal(expected[p], (19595 * r + 38470 * g + 7471 * b + 32768) >> 16);
    assert.deepEqual([...data.subarray(p * 3, p * 3 + 3)], [expected[p], expected[p], expected[p]]);
  }
});

test('sepia is the classic matrix, rounded half up and clamped', () => {
  const data = sepiaInPlace(rgb(255, 255, 255, 100, 50, 20, 0, 0, 0, 1, 22, 1));
  // white: R and G clamp at 255, B = 0.937 * 255 = 238.935 -> 239
  assert.deepEqual([...data.subarray(0, 3)], [255, 255, 239]);
  // 0.393*100 + 0.769*50 + 0.189*20 = 81.53 -> 82; G 72.56 -> 73; B 56.52 -> 57
  assert.deepEqual([...data.subarray(3, 6)], [82, 73, 57]);
  assert.deepEqual([...data.subarray(6, 9)], [0, 0, 0]);
  // an exact tie: R = 0.393 + 0.769*22 + 0.189 = 17.5 -> 18 (half up); G 15.609, B 12.151
  assert.deepEqual([...data.subarray(9, 12)], [18, 16, 12]);
  // and the integer rule on a spread of colours
  const all = Buffer.alloc(3 * 64);
  for (let i = 0; i < 64; i += 1) all.set([i * 4, 255 - i * 4, (i * 37) % 256], i * 3);
  const original = Buffer.from(all);
  sepiaInPlace(all);
  for (let i = 0; i < 64; i += 1) {
    const [r, g, b] = original.subarray(i * 3, i * 3 + 3);
    const want = [
      [393, 769, 189],
      [349, 686, 168],
      [272, 534, 131],
    ].map(([a, c, d]) => Math.min(255, Math.floor((a * r + c * g + d * b + 500) / 1000)));
    assert.deepEqual([...all.subarray(i * 3, i * 3 + 3)], want);
  }
});

test('sepia is not computed from the already-changed red (the Jimp mistake)', () => {
  const data = sepiaInPlace(rgb(200, 100, 50));
  // with the original R: G = 0.349*200 + 0.686*100 + 0.168*50 = 146.8 -> 147
  assert.equal(data[1], 147);
});

test('invert is 255 - v', () => {
  assert.deepEqual([...invertInPlace(rgb(0, 1, 128, 254, 255, 7))], [255, 254, 127, 1, 0, 248]);
});

test('PPM P6: header with comments parses, output layout is P6\\n<w> <h>\\n255\\n + pixels', async () => {
  const ppm = Buffer.concat([Buffer.from('P6 # made by hand\n2\t3\n# max\n255\n'), Buffer.from(sixPixels)]);
  const decoded = await decodeImage(ppm, { maxPixels: 6 });
  assert.equal(decoded.width, 2);
  assert.equal(decoded.height, 3);
  assert.deepEqual(decoded.data, sixPixels);
  const encoded = encodePpm(decoded);
  assert.equal(encoded.toString('latin1', 0, 11), 'P6\n2 3\n255\n');
  assert.deepEqual(encoded.subarray(11), sixPixels);
});

test('PPM P6 with maxval 65535 keeps the high byte', async () => {
  const samples = Buffer.alloc(6);
  [0x1234, 0xffff, 0x00ff].forEach((v, i) => samples.writeUInt16BE(v, i * 2));
  const decoded = await decodeImage(Buffer.concat([Buffer.from('P6\n1 1\n65535\n'), samples]), { maxPixels: 1 });
  assert.deepEqual([...decoded.data], [0x12, 0xff, 0x00]);
});

test('PPM errors: negative, zero, maxval 0, truncated pixels', async () => {
  const cases = ['P6\n-2 3\n255\n', 'P6\n0 0\n255\n', 'P6\n2 3\n0\n', 'P6\n2 3\n255\n\x01\x02', 'P6\n2'];
  for (const text of cases) {
    await assert.rejects(
      decodeImage(Buffer.from(text, 'latin1'), { maxPixels: 100 }),
      { code: 'bad_image', status: 400 },
      JSON.stringify(text),
    );
  }
});

test("reuseInput works inside the caller's PPM buffer instead of copying it", async () => {
  const ppm = Buffer.concat([Buffer.from('P6\n2 3\n255\n'), Buffer.from(sixPixels)]);
  const decoded = await decodeImage(ppm, { maxPixels: 6, reuseInput: true });
  invertInPlace(decoded.data);
  assert.equal(ppm[11], 255, 'the op wrote into the request bytes');
  const copy = Buffer.concat([Buffer.from('P6\n2 3\n255\n'), Buffer.from(sixPixels)]);
  invertInPlace((await decodeImage(copy, { maxPixels: 6 })).data);
  assert.equal(copy[11], 0, 'without reuseInput the input is left alone');
});

test('BMP: 24-bit bottom-up with row padding, top-down, 32-bit BITFIELDS, V5 header', async () => {
  const variants = [
    {},
    { topDown: true },
    { bits: 32 },
    { bits: 32, bitfields: true },
    { infoSize: 124 },
    { infoSize: 124, bits: 32, bitfields: true },
  ];
  for (const options of variants) {
    // width 3 makes 24-bit rows 9 bytes + 3 padding
    const pixels = Buffer.from([...sixPixels, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const decoded = await decodeImage(bmpFile(3, 3, pixels, options), { maxPixels: 9 });
    assert.equal(decoded.width, 3);
    assert.equal(decoded.height, 3);
    assert.deepEqual(decoded.data, pixels, JSON.stringify(options));
  }
});

test('BMP: truncated pixel data is bad_image', async () => {
  const file = bmpFile(3, 3, Buffer.alloc(27, 9));
  await assert.rejects(decodeImage(file.subarray(0, file.length - 20), { maxPixels: 9 }), { code: 'bad_image' });
});

test('pixel limit is checked from the header, before any pixel is decoded', async () => {
  // Headers with no pixel data at all: only a header check can answer 413 for them.
  const headersOnly = [
    pngHeaderOnly(100000, 100000),
    Buffer.from('P6\n60000 60000\n255\n'),
    bmpFile(1, 1, rgb(1, 2, 3)).subarray(0, 54),
  ];
  headersOnly[2].writeInt32LE(60000, 18);
  headersOnly[2].writeInt32LE(-60000, 22);
  for (const buf of headersOnly) {
    await assert.rejects(decodeImage(buf, { maxPixels: 50_000_000 }), { code: 'too_many_pixels', status: 413 });
  }
  const png = await sharp(Buffer.alloc(20 * 5 * 3, 7), { raw: { width: 20, height: 5, channels: 3 } })
    .png()
    .toBuffer();
  assert.equal((await decodeImage(png, { maxPixels: 100 })).width, 20, 'exactly the limit is allowed');
  await assert.rejects(decodeImage(png, { maxPixels: 99 }), { code: 'too_many_pixels' });
});

test('EXIF orientation is applied (6 = rotate 90 degrees clockwise)', async () => {
  // stored 4x2: left half red, right half blue
  const stored = Buffer.alloc(4 * 2 * 3);
  for (let y = 0; y < 2; y += 1) {
    for (let x = 0; x < 4; x += 1) stored.set(x < 2 ? [250, 0, 0] : [0, 0, 250], (y * 4 + x) * 3);
  }
  const jpeg = await sharp(stored, { raw: { width: 4, height: 2, channels: 3 } })
    .jpeg({ quality: 100, chromaSubsampling: '4:4:4' })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  const decoded = await decodeImage(jpeg, { maxPixels: 8 });
  assert.equal(decoded.width, 2);
  assert.equal(decoded.height, 4);
  assert.ok(decoded.data[0] > 200 && decoded.data[2] < 50, 'top row is the old left column: red');
  assert.ok(decoded.data[3 * 2 * 3 + 2] > 200, 'bottom row is the old right column: blue');
});

test('alpha dropped, gray expanded, 16-bit scaled by >> 8 (through sharp)', async () => {
  const rgba = await sharp(Buffer.from([10, 20, 30, 0, 40, 50, 60, 255]), { raw: { width: 2, height: 1, channels: 4 } })
    .png()
    .toBuffer();
  assert.deepEqual([...(await decodeImage(rgba, { maxPixels: 2 })).data], [10, 20, 30, 40, 50, 60]);
  const gray = await sharp(Buffer.from([7, 200]), { raw: { width: 2, height: 1, channels: 1 } })
    .png()
    .toBuffer();
  assert.deepEqual([...(await decodeImage(gray, { maxPixels: 2 })).data], [7, 7, 7, 200, 200, 200]);
  const deep = new Uint16Array([0x12ff, 0x8000, 0xffff]);
  const png16 = await sharp(deep, { raw: { width: 1, height: 1, channels: 3 } })
    .toColourspace('rgb16')
    .png()
    .toBuffer();
  assert.deepEqual([...(await decodeImage(png16, { maxPixels: 1 })).data], [0x12, 0x80, 0xff]);
});

test('format sniffing: refused formats are 415, junk and truncation are 400', async () => {
  const svg = Buffer.from('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="2" height="2"/>');
  await assert.rejects(decodeImage(svg, { maxPixels: 100 }), { code: 'unsupported_type', status: 415 });
  await assert.rejects(decodeImage(Buffer.from([0, 0, 1, 0, 1, 0]), { maxPixels: 100 }), { code: 'unsupported_type' });
  const avif = Buffer.concat([Buffer.from([0, 0, 0, 0x1c]), Buffer.from('ftypavif')]);
  await assert.rejects(decodeImage(avif, { maxPixels: 100 }), { code: 'unsupported_type' });
  await assert.rejects(decodeImage(Buffer.from('plain text'), { maxPixels: 100 }), { code: 'bad_image', status: 400 });
  // rule 4: PostScript, plain or DOS-EPS binary, is refused by magic bytes (Ghostscript is never run)
  for (const eps of [Buffer.from('%!PS-Adobe-3.0 EPSF-3.0\n'), Buffer.from([0xc5, 0xd0, 0xd3, 0xc6, 0, 0, 0, 0])]) {
    await assert.rejects(decodeImage(eps, { maxPixels: 100 }), { code: 'unsupported_type', status: 415 });
  }
  const png = await sharp(Buffer.alloc(300, 9), { raw: { width: 10, height: 10, channels: 3 } })
    .png()
    .toBuffer();
  await assert.rejects(decodeImage(png.subarray(0, png.length - 20), { maxPixels: 100 }), { code: 'bad_image' });
});

test('Pillow blur radius and weights (single-precision like BoxBlur.c)', () => {
  // sigma 2, 3 passes: sigma2 = 4/3, L = sqrt(17), l = 1, a = 3 * (2 - 4) / (6 * (4/3 - 4)) = 0.375
  const radius = boxRadiusForGaussian(2);
  assert.ok(Math.abs(radius - 1.375) < 1e-6, String(radius));
  const { radius: whole, inner, edge } = boxWeights(radius);
  assert.equal(whole, 1);
  assert.equal(inner, Math.floor(Math.fround(16777216 / Math.fround(radius * 2 + 1))));
  assert.equal(edge, Math.floor((16777216 - 3 * inner) / 2));
});

test('blur keeps a flat image flat and size unchanged, for tiny and tall images', () => {
  for (const [w, h, sigma] of [
    [1, 1, 2],
    [3, 1, 50],
    [1, 7, 0.3],
    [5, 40, 6],
  ]) {
    const data = Buffer.alloc(w * h * 3, 77);
    applyOperation({ width: w, height: h, data }, 'blur', { radius: sigma });
    assert.ok(
      data.every((v) => v === 77),
      `${w}x${h} sigma ${sigma}`,
    );
  }
});

test('encoders: png (any compression) and lossless webp round-trip exactly; jpeg decodes', async () => {
  const img = { width: 2, height: 3, data: Buffer.from(sixPixels) };
  for (const compression of [0, 9]) {
    const png = await encodeImage(img, 'png', { compression });
    assert.deepEqual((await decodeImage(png, { maxPixels: 6 })).data, sixPixels);
  }
  const webp = await encodeImage(img, 'webp', { lossless: true });
  assert.deepEqual((await decodeImage(webp, { maxPixels: 6 })).data, sixPixels);
  const jpeg = await encodeImage(img, 'jpeg', { quality: 50 });
  assert.equal((await decodeImage(jpeg, { maxPixels: 6 })).height, 3);
});

test('encodeReply returns raw output as header + pixels parts', async () => {
  const png = await encodeImage({ width: 2, height: 3, data: Buffer.from(sixPixels) }, 'png');
  const decoded = applyOperation(await decodeImage(png, { maxPixels: 6 }), 'invert');
  const result = await encodeReply(decoded, { op: 'invert', format: 'raw' });
  const body = Buffer.concat(result.parts);
  assert.equal(result.length, body.length);
  assert.equal(result.contentType, 'image/x-portable-pixmap');
  assert.deepEqual(body.subarray(11), invertInPlace(Buffer.from(sixPixels)));
});

test('async blur gives the same bytes as the sync one and lets other callbacks run', async () => {
  const width = 200;
  const height = 1000; // several steps of rows, and tens of ms of work
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 7919) % 251;
  const syncCopy = Buffer.from(data);
  gaussianBlurInPlace({ width, height, data: syncCopy }, 3);
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
  }, 0);
  const asyncCopy = Buffer.from(data);
  await gaussianBlurInPlaceAsync({ width, height, data: asyncCopy }, 3);
  clearInterval(timer);
  assert.deepEqual(asyncCopy, syncCopy);
  assert.ok(!asyncCopy.equals(data), 'the image did change');
  assert.ok(ticks > 0, 'the event loop ran during the blur');
});

/** Pillow's extended box blur written the slow, obvious way: the reference for the fast one. */
function referenceBlur({ width, height, data }, sigma) {
  const { radius, inner, edge } = boxWeights(boxRadiusForGaussian(sigma));
  const pass = (get, set, length, lines) => {
    for (let line = 0; line < lines; line += 1) {
      const row = Array.from({ length }, (_, i) => get(line, i));
      const at = (i) => row[Math.min(length - 1, Math.max(0, i))];
      for (let x = 0; x < length; x += 1) {
        let sum = 0;
        for (let i = x - radius; i <= x + radius; i += 1) sum += at(i);
        set(line, x, Math.floor((sum * inner + (at(x - radius - 1) + at(x + radius + 1)) * edge + 8388608) / 16777216));
      }
    }
  };
  const out = Buffer.from(data);
  for (let c = 0; c < 3; c += 1) {
    const across = [
      (y, x) => out[(y * width + x) * 3 + c],
      (y, x, v) => {
        out[(y * width + x) * 3 + c] = v;
      },
    ];
    const down = [
      (x, y) => out[(y * width + x) * 3 + c],
      (x, y, v) => {
        out[(y * width + x) * 3 + c] = v;
      },
    ];
    for (let p = 0; p < 3; p += 1) pass(...across, width, height);
    for (let p = 0; p < 3; p += 1) pass(...down, height, width);
  }
  return out;
}

test('blur equals the obvious extended-box reference at every width around the kernel size', () => {
  let seed = 11;
  const random = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 24;
  };
  for (const sigma of [0.4, 1, 2, 3.3]) {
    for (let width = 1; width <= 16; width += 1) {
      const data = Buffer.from(Array.from({ length: width * 3 * 3 }, random));
      const want = referenceBlur({ width, height: 3, data }, sigma);
      const got = gaussianBlurInPlace({ width, height: 3, data: Buffer.from(data) }, sigma);
      assert.deepEqual([...got], [...want], `sigma ${sigma} width ${width}`);
    }
  }
});
