'use strict';
// Bytes to pixels: any accepted format to { width, height, data } (8-bit RGB), after the
// header's pixel count and the bomb guards (sniff.js) have passed. sharp for JPEG, PNG,
// WebP, TIFF and GIF; bmp.js for BMP; binary PPM/PGM by hand here. No I/O, no config.

const sharp = require('sharp');

const bmp = require('./bmp');
const { ImageError, badImage, unsupported } = require('./errors');
const { sniffFormat, declaredSize, decodeBomb } = require('./sniff');
const { STEP_BYTES, pauseFor, inSteps } = require('./steps');

// ---------------------------------------------------------------- PPM (P6, and P5 gray)

const isSpace = (c) => c === 0x20 || (c >= 0x09 && c <= 0x0d);
const isDigit = (c) => c >= 0x30 && c <= 0x39;

/** The offset past whitespace and '#' comments, which may sit between header fields. */
function skipSpaceAndComments(buf, from) {
  let pos = from;
  while (pos < buf.length) {
    if (buf[pos] === 0x23) {
      while (pos < buf.length && buf[pos] !== 0x0a && buf[pos] !== 0x0d) pos += 1;
    } else if (isSpace(buf[pos])) {
      pos += 1;
    } else {
      break;
    }
  }
  return pos;
}

/** Parses a binary Netpbm header; returns { magic, width, height, maxval, offset } or throws. */
function parsePnmHeader(buf) {
  const fields = [];
  let pos = 2;
  while (fields.length < 3) {
    const start = skipSpaceAndComments(buf, pos);
    pos = start;
    while (pos < buf.length && isDigit(buf[pos]) && pos - start < 10) pos += 1;
    if (pos === start) throw badImage('PPM header is truncated or malformed');
    fields.push(Number(buf.toString('latin1', start, pos)));
  }
  // Exactly one whitespace byte separates the header from the samples.
  if (pos >= buf.length || !isSpace(buf[pos])) throw badImage('PPM header is truncated or malformed');
  const [width, height, maxval] = fields;
  if (width < 1 || height < 1) throw badImage('PPM width and height must be positive');
  if (maxval < 1 || maxval > 65535) throw badImage('PPM maxval must be 1..65535');
  return { magic: buf.toString('latin1', 0, 2), width, height, maxval, offset: pos + 1 };
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

async function grayToRgb(gray, pause) {
  const out = Buffer.allocUnsafe(gray.length * 3);
  const expand = (start, end) => {
    for (let i = start, j = start * 3; i < end; i += 1, j += 3) {
      const v = gray[i];
      out[j] = v;
      out[j + 1] = v;
      out[j + 2] = v;
    }
  };
  await inSteps(gray.length, STEP_BYTES, expand, pause);
  return out;
}

async function copyInSteps(src, pause) {
  const out = Buffer.allocUnsafe(src.length);
  await inSteps(src.length, 8 * STEP_BYTES, (start, end) => src.copy(out, start, start, end), pause);
  return out;
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
    const scale = (start, end) => scaleSamples(buf, offset, samples, maxval, start, end);
    await inSteps(count, STEP_BYTES, scale, pause);
  }
  if (samplesPerPixel === 3) return { width, height, data: samples };
  return { width, height, data: await grayToRgb(samples, pause) };
}

// ---------------------------------------------------------------- BMP

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

// ---------------------------------------------------------------- headers and the pixel limit

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
    const message = `image is ${header.width}x${header.height} = ${pixels} pixels, limit is ${maxPixels}`;
    throw new ImageError('too_many_pixels', 413, message);
  }
  return header;
}

// ---------------------------------------------------------------- sharp

const sharpInputOptions = (maxPixels) => ({
  // Second guard after the header check; libvips refuses anything larger.
  limitInputPixels: maxPixels,
  // Pillow ignores embedded ICC profiles; so do we, to agree with worker-python.
  ignoreIcc: true,
  failOn: 'warning',
});

/** libvips' failure as the contract's error. */
function sharpFailure(err, format, maxPixels, timeoutSeconds) {
  if (err instanceof ImageError) return err;
  const text = String(err && err.message);
  if (/pixel limit/i.test(text)) {
    return new ImageError('too_many_pixels', 413, `image has more than ${maxPixels} pixels`);
  }
  if (/timeout/i.test(text)) return badImage(`${format.toUpperCase()} took more than ${timeoutSeconds} s to decode`);
  return badImage(`${format.toUpperCase()} data is truncated or corrupt`);
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
    throw sharpFailure(err, format, maxPixels, timeoutSeconds);
  }
}

/**
 * Decodes any accepted format to 8-bit RGB, refusing images whose header declares more than
 * maxPixels before any pixel is decoded, and decode bombs (sniff.js) before any decoder
 * runs. EXIF orientation applied, alpha dropped, 16-bit scaled by >> 8, gray expanded to
 * three channels, first frame only. With reuseInput, a binary PPM is worked on in place
 * inside `buf` (the caller gives the bytes up). `header` skips a second header read;
 * `signal` stops the JS steps once aborted; `timeoutSeconds` bounds libvips' header read and decode.
 */
async function decodeImage(buf, { maxPixels, reuseInput = false, header = null, signal = null, timeoutSeconds = 0 }) {
  const { format } = header || (await inspect(buf, { maxPixels, timeoutSeconds }));
  const bomb = decodeBomb(buf, format);
  if (bomb) throw badImage(bomb);
  const pause = pauseFor(signal);
  if (format === 'ppm') return decodePnm(buf, parsePnmHeader(buf), reuseInput, pause);
  if (format === 'bmp') {
    return bmp.decodeBmp(buf, pause).catch((err) => {
      throw fromBmpError(err);
    });
  }
  return decodeWithSharp(buf, format, maxPixels, timeoutSeconds);
}

module.exports = { readHeader, inspect, decodeImage, parsePnmHeader };
