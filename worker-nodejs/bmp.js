'use strict';
// BMP to 8-bit RGB, as Pillow reads it: 1/4/8-bit palette, 16-bit (555, 565), 24-bit,
// 32-bit BGRX, RLE8 and RLE4. Rows are decoded in steps that yield to the event loop, and an
// RLE bitmap whose data ends before the last pixel is refused (Pillow: "not enough image data").

const { runSteps } = require('./steps');

const BI_RGB = 0;
const BI_RLE8 = 1;
const BI_RLE4 = 2;
const BI_BITFIELDS = 3;
const ROWS_PER_STEP_PIXELS = 1 << 18;

/** Raised for input faults; decode.js maps `kind` to 400 bad_image or 415 unsupported_type. */
class BmpError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}
const bad = (message) => new BmpError('bad', message);
const unsupported = (message) => new BmpError('unsupported', message);

/** Header fields; throws BmpError. */
function readBmpHeader(buf) {
  if (buf.length < 30) throw bad('BMP header is truncated');
  const headerSize = buf.readUInt32LE(14);
  if (headerSize < 40 || buf.length < 14 + 40) {
    throw unsupported(`BMP with a ${headerSize}-byte info header is not supported`);
  }
  const signedHeight = buf.readInt32LE(22);
  return {
    headerSize,
    dataOffset: buf.readUInt32LE(10),
    width: buf.readInt32LE(18),
    height: Math.abs(signedHeight),
    bottomUp: signedHeight > 0,
    bitsPerPixel: buf.readUInt16LE(28),
    compression: buf.readUInt32LE(30),
    colors: buf.readUInt32LE(46),
  };
}

/** The 16- or 32-bit pixel layout ('555', '565', 'bgrx'); throws for layouts Pillow refuses too. */
function pixelLayout(buf, { bitsPerPixel, compression }) {
  if (compression === BI_RGB) return bitsPerPixel === 16 ? '555' : 'bgrx';
  if (buf.length < 54 + 12) throw bad('BMP header is truncated');
  const masks = [0, 4, 8].map((o) => buf.readUInt32LE(54 + o)).join(',');
  const layouts = {
    16: { '63488,2016,31': '565', '31744,992,31': '555' },
    32: { '16711680,65280,255': 'bgrx' },
  };
  const layout = (layouts[bitsPerPixel] || {})[masks];
  if (!layout) throw unsupported('BMP with these BITFIELDS masks is not supported');
  return layout;
}

/** Palette as RGB triples; entries past the file's own are a gray ramp, as Pillow's default. */
function readPalette(buf, header) {
  const entries = header.colors || 2 ** header.bitsPerPixel;
  const start = 14 + header.headerSize + (header.compression === BI_BITFIELDS && header.headerSize === 40 ? 12 : 0);
  if (entries > 256 || start + entries * 4 > buf.length) throw bad('BMP palette is truncated');
  const palette = Buffer.alloc(256 * 3);
  for (let i = 0; i < 256; i += 1) palette.fill(i, i * 3, i * 3 + 3);
  for (let i = 0; i < entries; i += 1) {
    const at = start + i * 4;
    palette[i * 3] = buf[at + 2];
    palette[i * 3 + 1] = buf[at + 1];
    palette[i * 3 + 2] = buf[at];
  }
  return palette;
}

const expand5 = (v) => Math.floor((v * 255) / 31);
const expand6 = (v) => Math.floor((v * 255) / 63);

/** One uncompressed file row (`src` at `at`) into RGB at `out` in `dst`. */
function unpackRow(src, at, dst, out, width, bits, layout, palette) {
  for (let x = 0; x < width; x += 1, out += 3) {
    let index = -1;
    if (bits === 24) {
      const p = at + x * 3;
      dst[out] = src[p + 2];
      dst[out + 1] = src[p + 1];
      dst[out + 2] = src[p];
    } else if (bits === 32) {
      const p = at + x * 4;
      dst[out] = src[p + 2];
      dst[out + 1] = src[p + 1];
      dst[out + 2] = src[p];
    } else if (bits === 16) {
      const v = src[at + x * 2] | (src[at + x * 2 + 1] << 8);
      const six = layout === '565';
      dst[out] = expand5(six ? (v >> 11) & 31 : (v >> 10) & 31);
      dst[out + 1] = six ? expand6((v >> 5) & 63) : expand5((v >> 5) & 31);
      dst[out + 2] = expand5(v & 31);
    } else if (bits === 8) {
      index = src[at + x];
    } else if (bits === 4) {
      index = (src[at + (x >> 1)] >> (x & 1 ? 0 : 4)) & 15;
    } else {
      index = (src[at + (x >> 3)] >> (7 - (x & 7))) & 1;
    }
    if (index >= 0) {
      dst[out] = palette[index * 3];
      dst[out + 1] = palette[index * 3 + 1];
      dst[out + 2] = palette[index * 3 + 2];
    }
  }
}

async function decodeUncompressed(buf, header, layout, palette, pause) {
  const { width, height, bitsPerPixel: bits, dataOffset, bottomUp } = header;
  const stride = Math.floor((width * bits + 31) / 32) * 4;
  if (dataOffset + stride * height > buf.length) throw bad('BMP pixel data is truncated');
  const data = Buffer.allocUnsafe(width * height * 3);
  const rowsPerStep = Math.max(1, Math.floor(ROWS_PER_STEP_PIXELS / width));
  for (let y = 0; y < height; y += 1) {
    const fileRow = bottomUp ? height - 1 - y : y;
    unpackRow(buf, dataOffset + fileRow * stride, data, y * width * 3, width, bits, layout, palette);
    if (y % rowsPerStep === rowsPerStep - 1) await pause();
  }
  return data;
}

/** An encoded run: `count` pixels of `value` (RLE4: two alternating indices), cut at the row's end. */
function encodedRun(s, count, value, width, rle4, indices) {
  const n = Math.max(0, Math.min(count, width - s.x));
  for (let i = 0; i < n; i += 1) indices[s.len + i] = rle4 ? (i % 2 ? value & 15 : value >> 4) : value;
  s.len += n;
  s.x += n;
}

/** End of line: the rest of the row is index 0. */
function endOfLine(s, width, total, indices) {
  const padded = Math.min(total, Math.ceil(s.len / width) * width);
  indices.fill(0, s.len, padded);
  s.len = padded;
  s.x = 0;
}

/** A delta (right, down) skipping pixels, left as index 0; false when the file ends first. */
function delta(buf, s, width, total, indices) {
  if (s.pos + 2 > buf.length) return false;
  const gap = Math.min(total - s.len, buf[s.pos] + buf[s.pos + 1] * width);
  s.pos += 2;
  indices.fill(0, s.len, s.len + gap);
  s.len += gap;
  s.x = s.len % width;
  return true;
}

/** An absolute run of `value` literal indices, padded to 16 bits; false when decoding stops. */
function absoluteRun(buf, s, value, total, rle4, indices) {
  const dataCount = Math.min(total - s.len, value);
  const byteCount = rle4 ? Math.ceil(dataCount / 2) : dataCount;
  const available = Math.min(byteCount, buf.length - s.pos);
  let len = s.len;
  if (!rle4) {
    buf.copy(indices, len, s.pos, s.pos + available);
    len += available;
  }
  for (let i = 0; rle4 && i < available; i += 1) {
    const byte = buf[s.pos + i];
    indices[len++] = byte >> 4;
    if (i * 2 + 1 < dataCount) indices[len++] = byte & 15;
  }
  s.len = len;
  s.pos += available;
  if (available < byteCount || s.len === total) return false;
  s.x += value;
  if (s.pos % 2 !== 0) s.pos += 1;
  return true;
}

/** An escape (count 0): end of line, end of bitmap, delta or absolute run; false to stop. */
function escape(buf, s, value, width, total, rle4, indices) {
  if (value === 0) {
    endOfLine(s, width, total, indices);
    return true;
  }
  if (value === 1) return false;
  if (value === 2) return delta(buf, s, width, total, indices);
  return absoluteRun(buf, s, value, total, rle4, indices);
}

/**
 * Pillow's BmpRleDecoder: palette indices in file order (bottom row first when bottom-up),
 * gaps filled with index 0. A generator that yields every 4096 codes; returns the number of
 * indices written.
 */
function* rleIndices(buf, start, width, total, rle4, indices) {
  const s = { pos: start, len: 0, x: 0 };
  let steps = 0;
  while (s.len < total && s.pos + 1 < buf.length) {
    const count = buf[s.pos];
    const value = buf[s.pos + 1];
    s.pos += 2;
    if (count) encodedRun(s, count, value, width, rle4, indices);
    else if (!escape(buf, s, value, width, total, rle4, indices)) break;
    steps += 1;
    if (steps % 4096 === 0) yield;
  }
  return s.len;
}

async function decodeRle(buf, header, palette, pause) {
  const { width, height, dataOffset, bottomUp, compression } = header;
  const total = width * height;
  const indices = Buffer.allocUnsafe(total);
  const written = await runSteps(rleIndices(buf, dataOffset, width, total, compression === BI_RLE4, indices), pause);
  if (written < total) throw bad(`BMP RLE data ends after ${written} of ${total} pixels`);
  const data = Buffer.allocUnsafe(total * 3);
  const rowsPerStep = Math.max(1, Math.floor(ROWS_PER_STEP_PIXELS / width));
  for (let y = 0; y < height; y += 1) {
    const fileRow = bottomUp ? height - 1 - y : y;
    for (let x = 0, i = fileRow * width, out = y * width * 3; x < width; x += 1, i += 1, out += 3) {
      const p = indices[i] * 3;
      data[out] = palette[p];
      data[out + 1] = palette[p + 1];
      data[out + 2] = palette[p + 2];
    }
    if (y % rowsPerStep === rowsPerStep - 1) await pause();
  }
  return data;
}

function checkKind({ bitsPerPixel: bits, compression }) {
  if (![1, 4, 8, 16, 24, 32].includes(bits)) throw unsupported(`BMP with ${bits} bits per pixel is not supported`);
  const rleOk = (compression === BI_RLE8 && bits === 8) || (compression === BI_RLE4 && bits === 4);
  const bitfieldsOk = compression === BI_BITFIELDS && (bits === 16 || bits === 32);
  if (compression !== BI_RGB && !rleOk && !bitfieldsOk) {
    throw unsupported(`BMP compression ${compression} is not supported`);
  }
}

/**
 * Decodes a BMP to { width, height, data } (RGB). `pause` is awaited between steps (it may
 * throw to stop the work). Throws BmpError for input faults.
 */
async function decodeBmp(buf, pause) {
  const header = readBmpHeader(buf);
  checkKind(header);
  if (header.width < 1 || header.height < 1) throw bad('BMP width and height must be positive');
  if (header.dataOffset > buf.length) throw bad('BMP data is truncated');
  const { bitsPerPixel: bits, compression } = header;
  const palette = bits <= 8 ? readPalette(buf, header) : null;
  const data =
    compression === BI_RLE8 || compression === BI_RLE4
      ? await decodeRle(buf, header, palette, pause)
      : await decodeUncompressed(buf, header, bits >= 16 ? pixelLayout(buf, header) : null, palette, pause);
  return { width: header.width, height: header.height, data };
}

module.exports = { decodeBmp, readBmpHeader, BmpError };
