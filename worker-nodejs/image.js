'use strict';
// Pixels only: Buffers in, Buffers out. No I/O, no config, no HTTP.
// An "image" here is { width, height, data } with data = width*height*3 bytes of 8-bit RGB.

const sharp = require('sharp');

const bmp = require('./bmp');
const { decodeBomb } = require('./guards');

/** A failure caused by the input; `code` and `status` go straight into the HTTP error. */
class ImageError extends Error {
  constructor(code, status, message) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const badImage = (message) => new ImageError('bad_image', 400, message);
const unsupported = (message) => new ImageError('unsupported_type', 415, message);

const OPERATIONS = ['grayscale', 'sepia', 'invert', 'blur'];
const FORMATS = ['png', 'jpeg', 'webp', 'raw'];
// channels=auto: a PNG reply of an op whose result is gray by definition carries 1 channel.
const CHANNELS = ['3', 'auto'];
const GRAY_OPS = ['grayscale'];
const CONTENT_TYPES = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  raw: 'image/x-portable-pixmap',
};

// ---------------------------------------------------------------- format sniffing

const startsWith = (buf, bytes, at = 0) =>
  buf.length >= at + bytes.length && bytes.every((b, i) => buf[at + i] === b);
const ascii = (text) => [...text].map((c) => c.charCodeAt(0));

/** Known-but-refused formats, so they get 415 rather than 400. */
function refusedFormat(buf) {
  if (startsWith(buf, [0, 0, 1, 0]) || startsWith(buf, [0, 0, 2, 0])) return 'ICO';
  if (startsWith(buf, ascii('ftyp'), 4)) return 'AVIF/HEIF';
  if (startsWith(buf, [0xff, 0x0a]) || startsWith(buf, ascii('JXL '), 4)) return 'JPEG XL';
  if (startsWith(buf, ascii('jP  '), 4)) return 'JPEG 2000';
  if (startsWith(buf, ascii('8BPS'))) return 'PSD';
  if (startsWith(buf, ascii('%PDF'))) return 'PDF';
  if (startsWith(buf, ascii('%!PS')) || startsWith(buf, [0xc5, 0xd0, 0xd3, 0xc6])) return 'PostScript/EPS';
  if (startsWith(buf, ascii('qoif'))) return 'QOI';
  if (startsWith(buf, ascii('#?RADIANCE'))) return 'HDR';
  if (startsWith(buf, [0x76, 0x2f, 0x31, 0x01])) return 'EXR';
  if (startsWith(buf, ascii('DDS '))) return 'DDS';
  if (startsWith(buf, ascii('icns'))) return 'ICNS';
  if (buf.length >= 2 && buf[0] === 0x50 && [0x31, 0x32, 0x33, 0x34, 0x37].includes(buf[1])) {
    return 'Netpbm other than P5/P6';
  }
  const head = buf.subarray(0, 512).toString('latin1').replace(/^\uFEFF|^\xEF\xBB\xBF/, '').trimStart();
  if (/^<(\?xml|svg|!DOCTYPE svg)/i.test(head) && /<svg/i.test(buf.subarray(0, 4096).toString('latin1'))) {
    return 'SVG';
  }
  return null;
}

/** The accepted format of `buf` by its magic bytes; throws 415 for refused formats, 400 otherwise. */
function sniffFormat(buf) {
  if (startsWith(buf, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (startsWith(buf, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (startsWith(buf, ascii('RIFF')) && startsWith(buf, ascii('WEBP'), 8)) return 'webp';
  if (startsWith(buf, [0x49, 0x49, 0x2a, 0x00]) || startsWith(buf, [0x4d, 0x4d, 0x00, 0x2a])) return 'tiff';
  if (startsWith(buf, ascii('GIF87a')) || startsWith(buf, ascii('GIF89a'))) return 'gif';
  if (startsWith(buf, ascii('BM'))) return 'bmp';
  if (startsWith(buf, ascii('P6')) || startsWith(buf, ascii('P5'))) return 'ppm';
  const refused = refusedFormat(buf);
  if (refused) throw unsupported(`${refused} images are not accepted`);
  throw badImage('not a recognised image (expected JPEG, PNG, WebP, BMP, TIFF, GIF or PPM)');
}

// ---------------------------------------------------------------- steps
// Pixel loops run in steps of about a millisecond, awaiting `pause` between steps, so the
// event loop (health probes, admission, other requests) is never held for long. A `pause`
// may throw to stop the work, e.g. when the client has gone.

const STEP_BYTES = 3 * (1 << 18); // a whole number of RGB pixels

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

/** A pause that yields a turn of the event loop and throws once `signal` is aborted. */
function pauseFor(signal) {
  return async () => {
    await nextTurn();
    if (signal && signal.aborted) throw Object.assign(new Error('work cancelled: the client went away'), { aborted: true });
  };
}

/** fn(start, end) over 0..total in steps of `step`, pausing between steps. */
async function inSteps(total, step, fn, pause = nextTurn) {
  for (let at = 0; at < total; at += step) {
    fn(at, Math.min(total, at + step));
    if (at + step < total) await pause();
  }
}

// ---------------------------------------------------------------- PPM (P6, and P5 gray)

/** Parses a binary Netpbm header; returns { magic, width, height, maxval, offset } or throws. */
function parsePnmHeader(buf) {
  const magic = buf.toString('latin1', 0, 2);
  const fields = [];
  let pos = 2;
  while (fields.length < 3) {
    // Whitespace and '#' comments may sit between header fields.
    while (pos < buf.length) {
      const c = buf[pos];
      if (c === 0x23) {
        while (pos < buf.length && buf[pos] !== 0x0a && buf[pos] !== 0x0d) pos += 1;
      } else if (c === 0x20 || (c >= 0x09 && c <= 0x0d)) {
        pos += 1;
      } else {
        break;
      }
    }
    const start = pos;
    while (pos < buf.length && buf[pos] >= 0x30 && buf[pos] <= 0x39 && pos - start < 10) pos += 1;
    if (pos === start) throw badImage('PPM header is truncated or malformed');
    fields.push(Number(buf.toString('latin1', start, pos)));
  }
  // Exactly one whitespace byte separates the header from the samples.
  if (pos >= buf.length || !(buf[pos] === 0x20 || (buf[pos] >= 0x09 && buf[pos] <= 0x0d))) {
    throw badImage('PPM header is truncated or malformed');
  }
  const [width, height, maxval] = fields;
  if (width < 1 || height < 1) throw badImage('PPM width and height must be positive');
  if (maxval < 1 || maxval > 65535) throw badImage('PPM maxval must be 1..65535');
  return { magic, width, height, maxval, offset: pos + 1 };
}

/** PNM samples (any maxval, 8 or 16 bits) scaled to 8-bit, for samples start..end. */
function scaleSamples(buf, offset, samples, maxval, start, end) {
  const wide = maxval > 255;
  for (let i = start; i < end; i += 1) {
    const v = wide ? buf.readUInt16BE(offset + 2 * i) : buf[offset + i];
    const clamped = Math.min(v, maxval);
    samples[i] = maxval === 65535 ? clamped >> 8 : Math.round((clamped * 255) / maxval);
  }
}

async function decodePnm(buf, header, reuseInput, pause) {
  const { magic, width, height, maxval, offset } = header;
  const samplesPerPixel = magic === 'P6' ? 3 : 1;
  const bytesPerSample = maxval > 255 ? 2 : 1;
  const count = width * height * samplesPerPixel;
  if (buf.length - offset < count * bytesPerSample) throw badImage('PPM pixel data is truncated');
  if (samplesPerPixel === 3 && maxval === 255) {
    const direct = buf.subarray(offset, offset + count);
    // With reuseInput the op works on the caller's bytes in place: no 18 MB copy per strip.
    return { width, height, data: reuseInput ? direct : await copyInSteps(direct, pause) };
  }
  let samples = buf.subarray(offset, offset + count);
  if (maxval !== 255) {
    samples = Buffer.allocUnsafe(count);
    await inSteps(count, STEP_BYTES, (start, end) => scaleSamples(buf, offset, samples, maxval, start, end), pause);
  }
  if (samplesPerPixel === 3) return { width, height, data: samples };
  return { width, height, data: await grayToRgb(samples, pause) };
}

async function grayToRgb(gray, pause) {
  const out = Buffer.allocUnsafe(gray.length * 3);
  await inSteps(gray.length, STEP_BYTES, (start, end) => {
    for (let i = start, j = start * 3; i < end; i += 1, j += 3) {
      const v = gray[i];
      out[j] = v;
      out[j + 1] = v;
      out[j + 2] = v;
    }
  }, pause);
  return out;
}

async function copyInSteps(src, pause) {
  const out = Buffer.allocUnsafe(src.length);
  await inSteps(src.length, 8 * STEP_BYTES, (start, end) => src.copy(out, start, start, end), pause);
  return out;
}

/** Binary PPM (P6, maxval 255) of an RGB image. */
function ppmHeader({ width, height }) {
  return Buffer.from(`P6\n${width} ${height}\n255\n`, 'latin1');
}

function encodePpm(image) {
  const header = ppmHeader(image);
  return Buffer.concat([header, image.data], header.length + image.data.length);
}

// ---------------------------------------------------------------- decoding

// Hand-read sizes, so a header with no pixel data behind it still gets its size checked.
function pngSize(buf) {
  if (buf.length < 24 || buf.toString('latin1', 12, 16) !== 'IHDR') return null;
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

function gifSize(buf) {
  if (buf.length < 10) return null;
  return { width: buf.readUInt16LE(6), height: buf.readUInt16LE(8) };
}

function jpegSize(buf) {
  let pos = 2;
  while (pos + 9 <= buf.length) {
    if (buf[pos] !== 0xff) return null;
    const marker = buf[pos + 1];
    if (marker === 0xff) { // fill byte
      pos += 1;
      continue;
    }
    const isStartOfFrame = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);
    if (isStartOfFrame) return { height: buf.readUInt16BE(pos + 5), width: buf.readUInt16BE(pos + 7) };
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

/** The size a header declares, for the formats we read by hand; null when unknown. */
function declaredSize(buf, format) {
  const reader = SIZE_READERS[format];
  return reader ? reader(buf) : null;
}

const sharpInputOptions = (maxPixels) => ({
  // Second guard after the header check; libvips refuses anything larger.
  limitInputPixels: maxPixels,
  // Pillow ignores embedded ICC profiles; so do we, to agree with worker-python.
  ignoreIcc: true,
  failOn: 'warning',
});

/** bmp.js reports input faults with a kind; give them their HTTP meaning. */
function fromBmpError(err) {
  if (!(err instanceof bmp.BmpError)) return err;
  return err.kind === 'unsupported' ? unsupported(err.message) : badImage(err.message);
}

function bmpHeader(buf) {
  try {
    return bmp.readBmpHeader(buf);
  } catch (err) {
    throw fromBmpError(err);
  }
}

/** Width and height from the header, by hand where we can, else libvips' header reader. */
async function headerSize(buf, format, timeoutSeconds) {
  if (format === 'ppm') return parsePnmHeader(buf);
  if (format === 'bmp') return bmpHeader(buf);
  const declared = declaredSize(buf, format);
  if (declared) return declared;
  let meta;
  try {
    meta = await sharp(buf, { failOn: 'none' }).timeout({ seconds: timeoutSeconds }).metadata();
  } catch {
    throw badImage(`${format.toUpperCase()} header is truncated or corrupt`);
  }
  return { width: meta.width, height: meta.pageHeight || meta.height };
}

/** Width, height and format from the header only, without decoding pixels. */
async function readHeader(buf, { timeoutSeconds = 0 } = {}) {
  const format = sniffFormat(buf);
  const { width, height } = await headerSize(buf, format, timeoutSeconds);
  if (!(width >= 1 && height >= 1)) throw badImage(`${format.toUpperCase()} width and height must be positive`);
  return { format, width, height };
}

/**
 * The header (readHeader) of an image the worker will decode: 413 too_many_pixels when it
 * declares more than maxPixels, 415/400 for refused or unreadable formats.
 */
async function inspect(buf, { maxPixels, timeoutSeconds = 0 }) {
  const header = await readHeader(buf, { timeoutSeconds });
  const pixels = header.width * header.height;
  if (pixels > maxPixels) {
    throw new ImageError('too_many_pixels', 413,
      `image is ${header.width}x${header.height} = ${pixels} pixels, limit is ${maxPixels}`);
  }
  return header;
}

async function decodeWithSharp(buf, format, maxPixels, timeoutSeconds) {
  try {
    const { data, info } = await sharp(buf, sharpInputOptions(maxPixels))
      .timeout({ seconds: timeoutSeconds })
      .rotate()
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw badImage(`unexpected ${info.channels}-channel image`);
    return { width: info.width, height: info.height, data };
  } catch (err) {
    if (err instanceof ImageError) throw err;
    const text = String(err && err.message);
    if (/pixel limit/i.test(text)) throw new ImageError('too_many_pixels', 413, `image has more than ${maxPixels} pixels`);
    if (/timeout/i.test(text)) throw badImage(`${format.toUpperCase()} took more than ${timeoutSeconds} s to decode`);
    throw badImage(`${format.toUpperCase()} data is truncated or corrupt`);
  }
}

/**
 * Decodes any accepted format to 8-bit RGB, refusing images whose header declares more than
 * maxPixels before any pixel is decoded, and decode bombs (guards.js) before any decoder
 * runs. EXIF orientation applied, alpha dropped, 16-bit scaled by >> 8, gray expanded to
 * three channels, first frame only. With reuseInput, a binary PPM is worked on in place
 * inside `buf` (the caller gives the bytes up). `header` skips a second header read;
 * `signal` stops the JS steps once aborted; `timeoutSeconds` bounds libvips' header read and decode.
 */
async function decodeImage(buf, {
  maxPixels, reuseInput = false, header = null, signal = null, timeoutSeconds = 0,
}) {
  const { format } = header || await inspect(buf, { maxPixels, timeoutSeconds });
  const bomb = decodeBomb(buf, format);
  if (bomb) throw badImage(bomb);
  const pause = pauseFor(signal);
  if (format === 'ppm') return decodePnm(buf, parsePnmHeader(buf), reuseInput, pause);
  if (format === 'bmp') return bmp.decodeBmp(buf, pause).catch((err) => { throw fromBmpError(err); });
  return decodeWithSharp(buf, format, maxPixels, timeoutSeconds);
}

// ---------------------------------------------------------------- operations (in place)

/** Pillow's convert("L"): L = (19595 R + 38470 G + 7471 B + 32768) >> 16, written as R=G=B=L. */
function grayscaleRange(data, start, end) {
  for (let i = start; i < end; i += 3) {
    const l = (19595 * data[i] + 38470 * data[i + 1] + 7471 * data[i + 2] + 32768) >> 16;
    data[i] = l;
    data[i + 1] = l;
    data[i + 2] = l;
  }
}

/** The classic sepia matrix in integer thousandths, rounded half up, clamped to 255. */
function sepiaRange(data, start, end) {
  for (let i = start; i < end; i += 3) {
    const r = data[i];
    const g = data[i + 1];
    const b = data[i + 2];
    const nr = Math.floor((393 * r + 769 * g + 189 * b + 500) / 1000);
    const ng = Math.floor((349 * r + 686 * g + 168 * b + 500) / 1000);
    const nb = Math.floor((272 * r + 534 * g + 131 * b + 500) / 1000);
    data[i] = nr > 255 ? 255 : nr;
    data[i + 1] = ng > 255 ? 255 : ng;
    data[i + 2] = nb > 255 ? 255 : nb;
  }
}

function invertRange(data, start, end) {
  for (let i = start; i < end; i += 1) data[i] = 255 - data[i];
}

// Per-pixel ops over a byte range (whole pixels) of an RGB buffer, in place.
const PIXEL_OPS = { grayscale: grayscaleRange, sepia: sepiaRange, invert: invertRange };

const wholeBuffer = (range) => (data) => {
  range(data, 0, data.length);
  return data;
};
const grayscaleInPlace = wholeBuffer(grayscaleRange);
const sepiaInPlace = wholeBuffer(sepiaRange);
const invertInPlace = wholeBuffer(invertRange);

// ---------------------------------------------------------------- Gaussian blur (Pillow port)
// A port of Pillow's src/libImaging/BoxBlur.c: GaussianBlur = three extended box blurs with a
// fractional radius, edges clamped. Math.fround reproduces its single-precision float steps,
// so the integer weights, and therefore the output bytes, are the same as Pillow's.

const BLUR_PASSES = 3;

/** Pillow's _gaussian_blur_radius (C floats). */
function boxRadiusForGaussian(sigma, passes = BLUR_PASSES) {
  const f = Math.fround;
  const radius = f(sigma);
  const sigma2 = f(f(radius * radius) / passes);
  const boxLength = f(Math.sqrt(12.0 * sigma2 + 1.0));
  const whole = f(Math.floor((boxLength - 1.0) / 2.0));
  let fraction = f(f(f(2 * whole) + 1) * f(f(whole * f(whole + 1)) - f(3 * sigma2)));
  fraction = f(fraction / f(6 * f(sigma2 - f(f(whole + 1) * f(whole + 1)))));
  return f(whole + fraction);
}

/** Pillow's integer weights for one extended box of fractional radius. */
function boxWeights(floatRadius) {
  const f = Math.fround;
  const radius = Math.trunc(floatRadius);
  const inner = Math.floor(f(16777216 / f(f(floatRadius * 2) + 1)));
  const edge = Math.floor((16777216 - (radius * 2 + 1) * inner) / 2);
  return { radius, inner, edge };
}

/** For each output position: the clamped indices that leave, enter and sit just outside the box. */
function slidingIndices(length, radius) {
  const last = length - 1;
  const clamp = (i) => (i < 0 ? 0 : i > last ? last : i);
  const leave = new Int32Array(length);
  const enter = new Int32Array(length);
  const beyond = new Int32Array(length);
  for (let x = 0; x < length; x += 1) {
    leave[x] = clamp(x - radius - 1);
    enter[x] = clamp(x + radius);
    beyond[x] = clamp(x + radius + 1);
  }
  // The window sum just before position 0 covers -radius-1 .. radius-1.
  const initial = [];
  for (let i = -radius - 1; i <= radius - 1; i += 1) initial.push(clamp(i));
  return { leave, enter, beyond, initial };
}

/**
 * One box pass along a row of RGB pixels: src[srcAt..] -> dst[dstAt..], `width` pixels.
 * Pillow computes (acc * inner + (left + right) * edge + 2^23) >> 24 in uint32, and the true
 * value is below 2^32: Math.imul's wrapped products, summed and taken mod 2^32 by `>>> 24`,
 * give exactly that, in 32-bit integer arithmetic V8 keeps off the float path.
 */
function boxPassRow(src, srcAt, dst, dstAt, width, weights, indices) {
  const { inner, edge, radius } = weights;
  const { leave, enter, beyond, initial } = indices;
  const acc = [0, 0, 0];
  for (const i of initial) {
    const p = srcAt + i * 3;
    acc[0] += src[p];
    acc[1] += src[p + 1];
    acc[2] += src[p + 2];
  }
  // Where no index is clamped (x-r-1 >= 0, x+r+1 <= width-1) they are plain offsets.
  const firstInner = Math.min(width, radius + 1);
  const lastInner = Math.max(firstInner, width - radius - 1);
  boxRowClamped(src, srcAt, dst, dstAt, 0, firstInner, inner, edge, leave, enter, beyond, acc);
  let a0 = acc[0];
  let a1 = acc[1];
  let a2 = acc[2];
  let l = srcAt + (firstInner - radius - 1) * 3;
  let e = l + (2 * radius + 1) * 3;
  for (let out = dstAt + firstInner * 3, end = dstAt + lastInner * 3; out < end; out += 3, l += 3, e += 3) {
    a0 += src[e] - src[l];
    a1 += src[e + 1] - src[l + 1];
    a2 += src[e + 2] - src[l + 2];
    dst[out] = (Math.imul(a0, inner) + Math.imul(src[l] + src[e + 3], edge) + 8388608) >>> 24;
    dst[out + 1] = (Math.imul(a1, inner) + Math.imul(src[l + 1] + src[e + 4], edge) + 8388608) >>> 24;
    dst[out + 2] = (Math.imul(a2, inner) + Math.imul(src[l + 2] + src[e + 5], edge) + 8388608) >>> 24;
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  boxRowClamped(src, srcAt, dst, dstAt, lastInner, width, inner, edge, leave, enter, beyond, acc);
}

/** boxPassRow for positions from..to, where indices may be clamped at the row's ends. */
function boxRowClamped(src, srcAt, dst, dstAt, from, to, inner, edge, leave, enter, beyond, acc) {
  for (let x = from, out = dstAt + from * 3; x < to; x += 1, out += 3) {
    const l = srcAt + leave[x] * 3;
    const e = srcAt + enter[x] * 3;
    const b = srcAt + beyond[x] * 3;
    for (let c = 0; c < 3; c += 1) {
      acc[c] += src[e + c] - src[l + c];
      dst[out + c] = (Math.imul(acc[c], inner) + Math.imul(src[l + c] + src[b + c], edge) + 8388608) >>> 24;
    }
  }
}

/**
 * One box pass down a band of columns, walked row by row so memory is read in order.
 * Rows are `bandBytes` wide; src and dst rows are `srcStride` / `dstStride` apart.
 */
function boxPassColumns(src, srcAt, srcStride, dst, dstAt, dstStride, bandBytes, height, weights, indices, acc) {
  const { inner, edge } = weights;
  const { leave, enter, beyond, initial } = indices;
  acc.fill(0, 0, bandBytes);
  for (const i of initial) {
    const row = srcAt + i * srcStride;
    for (let k = 0; k < bandBytes; k += 1) acc[k] += src[row + k];
  }
  for (let y = 0; y < height; y += 1) {
    const l = srcAt + leave[y] * srcStride;
    const e = srcAt + enter[y] * srcStride;
    const b = srcAt + beyond[y] * srcStride;
    const out = dstAt + y * dstStride;
    for (let k = 0; k < bandBytes; k += 1) {
      const sum = acc[k] + src[e + k] - src[l + k];
      acc[k] = sum;
      dst[out + k] = (Math.imul(sum, inner) + Math.imul(src[l + k] + src[b + k], edge) + 8388608) >>> 24;
    }
  }
}

const BLUR_BAND_PIXELS = 256;

// Pixels of rows blurred between pauses when run asynchronously (one column band is a step
// too): a few ms each, so a 50 MP blur never holds the event loop (and /healthz) for long.
const BLUR_STEP_PIXELS = 1 << 17;

/**
 * Pillow's ImageFilter.GaussianBlur(sigma) on an RGB image, in place in `data`: three
 * horizontal passes, then three vertical ones (rounding makes the order matter), as Pillow
 * does. Scratch memory is a few rows and one band of columns, never a second whole image.
 * A generator: each `yield` is a point where the caller may pause.
 */
function* gaussianBlurSteps({ width, height, data }, sigma) {
  const weights = boxWeights(boxRadiusForGaussian(sigma));
  const rowBytes = width * 3;

  const across = slidingIndices(width, weights.radius);
  const rowsPerStep = Math.max(1, Math.floor(BLUR_STEP_PIXELS / width));
  const rowA = new Uint8Array(rowBytes);
  const rowB = new Uint8Array(rowBytes);
  for (let y = 0, at = 0; y < height; y += 1, at += rowBytes) {
    boxPassRow(data, at, rowA, 0, width, weights, across);
    boxPassRow(rowA, 0, rowB, 0, width, weights, across);
    boxPassRow(rowB, 0, data, at, width, weights, across);
    if (y % rowsPerStep === rowsPerStep - 1) yield;
  }

  const down = slidingIndices(height, weights.radius);
  const bandMax = Math.min(width, BLUR_BAND_PIXELS) * 3;
  const bandA = new Uint8Array(bandMax * height);
  const bandB = new Uint8Array(bandMax * height);
  const acc = new Int32Array(bandMax);
  for (let x0 = 0; x0 < rowBytes; x0 += bandMax) {
    const band = Math.min(bandMax, rowBytes - x0);
    boxPassColumns(data, x0, rowBytes, bandA, 0, band, band, height, weights, down, acc);
    boxPassColumns(bandA, 0, band, bandB, 0, band, band, height, weights, down, acc);
    boxPassColumns(bandB, 0, band, data, x0, rowBytes, band, height, weights, down, acc);
    yield;
  }
}

function gaussianBlurInPlace(image, sigma) {
  for (const _ of gaussianBlurSteps(image, sigma)); // eslint-disable-line no-unused-vars, no-empty
  return image.data;
}

/** The same blur, awaiting `pause` (other requests, /healthz run) between steps. */
async function gaussianBlurInPlaceAsync(image, sigma, pause = nextTurn) {
  for (const _ of gaussianBlurSteps(image, sigma)) { // eslint-disable-line no-unused-vars
    await pause();
  }
  return image.data;
}

/** applyOperation in steps, awaiting `pause` between them; the result is the same. */
async function applyOperationAsync(image, op, { radius = 2 } = {}, pause = nextTurn) {
  if (op === 'blur') {
    await gaussianBlurInPlaceAsync(image, radius, pause);
    return image;
  }
  const range = PIXEL_OPS[op];
  if (!range) throw new ImageError('unknown_op', 400, `unknown op ${JSON.stringify(op)}`);
  await inSteps(image.data.length, STEP_BYTES, (start, end) => range(image.data, start, end), pause);
  return image;
}

/** Applies one op to image.data in place and returns the image. */
function applyOperation(image, op, { radius = 2 } = {}) {
  switch (op) {
    case 'grayscale':
      grayscaleInPlace(image.data);
      return image;
    case 'sepia':
      sepiaInPlace(image.data);
      return image;
    case 'invert':
      invertInPlace(image.data);
      return image;
    case 'blur':
      gaussianBlurInPlace(image, radius);
      return image;
    default:
      throw new ImageError('unknown_op', 400, `unknown op ${JSON.stringify(op)}`);
  }
}

// ---------------------------------------------------------------- encoding

/** True when the reply is 1-channel gray: asked with channels=auto, gray op, PNG out. */
function grayReply(op, format, channels) {
  return channels === 'auto' && GRAY_OPS.includes(op) && format === 'png';
}

/** The first channel of an RGB buffer whose channels are equal: width*height bytes. */
async function firstChannel(data, pause) {
  const gray = Buffer.allocUnsafe(data.length / 3);
  await inSteps(gray.length, STEP_BYTES, (start, end) => {
    for (let i = start, j = start * 3; i < end; i += 1, j += 3) gray[i] = data[j];
  }, pause);
  return gray;
}

/**
 * Encodes an image ({ width, height, data, channels: 3 (default) or 1 for gray });
 * params: quality (jpeg/webp), lossless (webp), compression (png). A 1-channel PNG uses
 * libpng's adaptive filtering: on a 4000x1500 photo strip at level 2 it gives 2.83 MB for
 * 3.77 MB (+0.1 s); on RGB photos it makes files larger and 2-3x slower, so it stays off.
 */
async function encodeImage(image, format, {
  quality = 90, lossless = false, compression = 6, timeoutSeconds = 0,
} = {}) {
  if (format === 'raw') return encodePpm(image);
  const channels = image.channels || 3;
  let pipeline = sharp(image.data, {
    raw: { width: image.width, height: image.height, channels },
    limitInputPixels: false,
  }).timeout({ seconds: timeoutSeconds });
  if (channels === 1) pipeline = pipeline.toColourspace('b-w');
  switch (format) {
    case 'png':
      return pipeline.png({ compressionLevel: compression, adaptiveFiltering: channels === 1 && compression > 0 })
        .toBuffer();
    case 'jpeg':
      return pipeline.jpeg({ quality }).toBuffer();
    case 'webp':
      return pipeline.webp({ quality, lossless }).toBuffer();
    default:
      throw new ImageError('bad_param', 400, `unknown format ${JSON.stringify(format)}`);
  }
}

/**
 * Decode, apply `op`, encode: the whole job for one request body (see decodeImage for
 * reuseInput, header, signal and timeoutSeconds, which bounds decoding only). The file comes
 * back as `parts`, Buffers to send in order: raw output is its header and the pixels, so
 * 18 MB of pixels are not copied just to prepend 20 bytes. Every JS pixel loop runs in steps
 * (see inSteps).
 */
async function processImage(buf, {
  op, format = 'png', maxPixels, reuseInput = false, channels = '3', header = null, signal = null,
  timeoutSeconds = 0, ...params
}) {
  const pause = pauseFor(signal);
  const decoded = await decodeImage(buf, { maxPixels, reuseInput, header, signal, timeoutSeconds });
  let processed = await applyOperationAsync(decoded, op, params, pause);
  if (grayReply(op, format, channels)) {
    const gray = await firstChannel(processed.data, pause);
    processed = { width: processed.width, height: processed.height, data: gray, channels: 1 };
  }
  const parts = format === 'raw'
    ? [ppmHeader(processed), processed.data]
    // No timeout on encoding: its cost is linear in pixels already bounded by maxPixels, and a
    // 50 MP PNG at level 9 may rightly take long on a small instance.
    : [await encodeImage(processed, format, params)];
  return {
    parts,
    length: parts.reduce((sum, part) => sum + part.length, 0),
    contentType: CONTENT_TYPES[format],
    width: processed.width,
    height: processed.height,
  };
}

module.exports = {
  ImageError,
  OPERATIONS,
  FORMATS,
  CHANNELS,
  CONTENT_TYPES,
  grayReply,
  sniffFormat,
  readHeader,
  inspect,
  decodeImage,
  parsePnmHeader,
  encodePpm,
  grayscaleInPlace,
  sepiaInPlace,
  invertInPlace,
  boxRadiusForGaussian,
  boxWeights,
  gaussianBlurInPlace,
  gaussianBlurInPlaceAsync,
  applyOperation,
  applyOperationAsync,
  encodeImage,
  processImage,
};
