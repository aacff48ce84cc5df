'use strict';
// What a body says it is, before any decoder runs: the format by its magic bytes, the size
// its header declares, and the decode-bomb guards (JPEG scan count, PNG compressed chunks).
// Pure functions of the bytes: no pixels are decoded.

const zlib = require('node:zlib');

const { badImage, unsupported } = require('./errors');

// ---------------------------------------------------------------- magic bytes

const startsWith = (buf, bytes, at = 0) => buf.length >= at + bytes.length && bytes.every((b, i) => buf[at + i] === b);
const ascii = (text) => [...text].map((c) => c.charCodeAt(0));
function magic(bytes, at = 0) {
  const expected = typeof bytes === 'string' ? ascii(bytes) : bytes;
  return (buf) => startsWith(buf, expected, at);
}

function anyOf(...tests) {
  return (buf) => tests.some((test) => test(buf));
}

// Accepted formats, first match wins.
const ACCEPTED = [
  ['jpeg', magic([0xff, 0xd8, 0xff])],
  ['png', magic([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])],
  ['webp', (buf) => startsWith(buf, ascii('RIFF')) && startsWith(buf, ascii('WEBP'), 8)],
  ['tiff', anyOf(magic([0x49, 0x49, 0x2a, 0x00]), magic([0x4d, 0x4d, 0x00, 0x2a]))],
  ['gif', anyOf(magic('GIF87a'), magic('GIF89a'))],
  ['bmp', magic('BM')],
  ['ppm', anyOf(magic('P6'), magic('P5'))],
];

const otherNetpbm = (buf) => buf.length >= 2 && buf[0] === 0x50 && [0x31, 0x32, 0x33, 0x34, 0x37].includes(buf[1]);

function looksLikeSvg(buf) {
  const head = buf
    .subarray(0, 512)
    .toString('latin1')
    .replace(/^\uFEFF|^\xEF\xBB\xBF/, '')
    .trimStart();
  return /^<(\?xml|svg|!DOCTYPE svg)/i.test(head) && /<svg/i.test(buf.subarray(0, 4096).toString('latin1'));
}

// Known-but-refused formats, so they get 415 rather than 400; first match wins.
const REFUSED = [
  ['ICO', anyOf(magic([0, 0, 1, 0]), magic([0, 0, 2, 0]))],
  ['AVIF/HEIF', magic('ftyp', 4)],
  ['JPEG XL', anyOf(magic([0xff, 0x0a]), magic('JXL ', 4))],
  ['JPEG 2000', magic('jP  ', 4)],
  ['PSD', magic('8BPS')],
  ['PDF', magic('%PDF')],
  ['PostScript/EPS', anyOf(magic('%!PS'), magic([0xc5, 0xd0, 0xd3, 0xc6]))],
  ['QOI', magic('qoif')],
  ['HDR', magic('#?RADIANCE')],
  ['EXR', magic([0x76, 0x2f, 0x31, 0x01])],
  ['DDS', magic('DDS ')],
  ['ICNS', magic('icns')],
  ['Netpbm other than P5/P6', otherNetpbm],
  ['SVG', looksLikeSvg],
];

const firstMatch = (table, buf) => (table.find(([, test]) => test(buf)) || [null])[0];

/** The accepted format of `buf` by its magic bytes; throws 415 for refused formats, 400 otherwise. */
function sniffFormat(buf) {
  const format = firstMatch(ACCEPTED, buf);
  if (format) return format;
  const refused = firstMatch(REFUSED, buf);
  if (refused) throw unsupported(`${refused} images are not accepted`);
  throw badImage('not a recognised image (expected JPEG, PNG, WebP, BMP, TIFF, GIF or PPM)');
}

// ---------------------------------------------------------------- declared sizes
// Hand-read sizes, so a header with no pixel data behind it still gets its size checked.

function pngSize(buf) {
  if (buf.length < 24 || buf.toString('latin1', 12, 16) !== 'IHDR') return null;
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

function gifSize(buf) {
  if (buf.length < 10) return null;
  return { width: buf.readUInt16LE(6), height: buf.readUInt16LE(8) };
}

const isStartOfFrame = (marker) => marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);

function jpegSize(buf) {
  let pos = 2;
  while (pos + 9 <= buf.length) {
    if (buf[pos] !== 0xff) return null;
    const marker = buf[pos + 1];
    if (marker === 0xff) {
      pos += 1; // fill byte
      continue;
    }
    if (isStartOfFrame(marker)) return { height: buf.readUInt16BE(pos + 5), width: buf.readUInt16BE(pos + 7) };
    if (marker === 0xda || marker === 0xd9) return null; // scan or end before any frame header
    pos += 2 + buf.readUInt16BE(pos + 2);
  }
  return null;
}

function webpSize(buf) {
  if (buf.length < 30) return null;
  const chunk = buf.toString('latin1', 12, 16);
  if (chunk === 'VP8 ') return { width: buf.readUInt16LE(26) & 0x3fff, height: buf.readUInt16LE(28) & 0x3fff };
  if (chunk === 'VP8L') {
    const bits = buf.readUInt32LE(21);
    return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
  }
  if (chunk === 'VP8X') return { width: buf.readUIntLE(24, 3) + 1, height: buf.readUIntLE(27, 3) + 1 };
  return null;
}

const SIZE_READERS = { png: pngSize, gif: gifSize, jpeg: jpegSize, webp: webpSize };

/** The size a header declares, for the formats read by hand here; null when unknown. */
function declaredSize(buf, format) {
  const reader = SIZE_READERS[format];
  return reader ? reader(buf) : null;
}

// ---------------------------------------------------------------- decode-bomb guards
// Each returns a reason string for a refusal, or null. Linear in the file's size.

const MAX_JPEG_SCANS = 100;
const MAX_INFLATED_CHUNK = 1024 * 1024; // Pillow's MAX_TEXT_CHUNK
const STANDALONE = new Set([0x01, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8]);

/** The offset of the next marker (0xFF not followed by 0x00, RSTn or fill) after entropy data. */
function endOfEntropyData(buf, pos) {
  let at = pos;
  for (;;) {
    at = buf.indexOf(0xff, at);
    if (at < 0 || at + 1 >= buf.length) return buf.length;
    const next = buf[at + 1];
    if (next === 0x00 || (next >= 0xd0 && next <= 0xd7) || next === 0xff) at += 1;
    else return at;
  }
}

/** The offset after the JPEG segment at `pos` (a marker), counting scans in `seen`. */
function nextSegment(buf, pos, seen) {
  const marker = buf[pos + 1];
  if (marker === 0xff) return pos + 1;
  if (STANDALONE.has(marker)) return pos + 2;
  const end = pos + 2 + buf.readUInt16BE(pos + 2);
  if (marker !== 0xda) return end;
  seen.scans += 1;
  return endOfEntropyData(buf, end);
}

/** Counts SOS markers by walking the segments; more than MAX_JPEG_SCANS is a refusal. */
function jpegScanBomb(buf) {
  const seen = { scans: 0 };
  let pos = 2;
  // Not a marker: leave the verdict to the decoder. EOI: the end.
  while (pos + 4 <= buf.length && buf[pos] === 0xff && buf[pos + 1] !== 0xd9) {
    pos = nextSegment(buf, pos, seen);
    if (seen.scans > MAX_JPEG_SCANS) return `JPEG has more than ${MAX_JPEG_SCANS} scans`;
  }
  return null;
}

/** The compressed payload of a zTXt, iCCP or compressed iTXt chunk, or null. */
function compressedPayload(type, data) {
  const nul = data.indexOf(0);
  if (nul < 0) return null;
  if (type === 'zTXt' || type === 'iCCP') return data.subarray(nul + 2);
  if (type !== 'iTXt' || data[nul + 1] !== 1) return null;
  const language = data.indexOf(0, nul + 3);
  const translated = language < 0 ? -1 : data.indexOf(0, language + 1);
  return translated < 0 ? null : data.subarray(translated + 1);
}

/** True when `payload` inflates to more than MAX_INFLATED_CHUNK bytes (stopping there). */
function inflatesTooFar(payload) {
  try {
    zlib.inflateSync(payload, { maxOutputLength: MAX_INFLATED_CHUNK, finishFlush: zlib.constants.Z_SYNC_FLUSH });
    return false;
  } catch (err) {
    return err.code === 'ERR_BUFFER_TOO_LARGE';
  }
}

/** Walks the chunks; a compressed ancillary chunk that inflates past 1 MiB is a refusal. */
function pngChunkBomb(buf) {
  let pos = 8;
  while (pos + 12 <= buf.length) {
    const length = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    if (type === 'IEND') return null;
    const payload = compressedPayload(type, buf.subarray(pos + 8, Math.min(buf.length, pos + 8 + length)));
    if (payload && inflatesTooFar(payload)) {
      return `PNG ${type} chunk inflates to more than ${MAX_INFLATED_CHUNK} bytes`;
    }
    pos += 12 + length;
  }
  return null;
}

const BOMB_CHECKS = { jpeg: jpegScanBomb, png: pngChunkBomb };

/** The refusal reason for `buf` of `format`, or null. */
function decodeBomb(buf, format) {
  const check = BOMB_CHECKS[format];
  return check ? check(buf) : null;
}

module.exports = {
  sniffFormat,
  declaredSize,
  decodeBomb,
  MAX_JPEG_SCANS,
  MAX_INFLATED_CHUNK,
};
