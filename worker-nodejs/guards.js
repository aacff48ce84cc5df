'use strict';
// Decode-bomb checks that read a file's structure before any decoder runs: the number of
// scans in a JPEG, and what a PNG's compressed ancillary chunks inflate to. Each returns a
// reason string for a refusal, or null. Linear in the file's size; no pixels are decoded.

const zlib = require('node:zlib');

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

/** Counts SOS markers by walking the segments; more than MAX_JPEG_SCANS is a refusal. */
function jpegScanBomb(buf) {
  let pos = 2;
  let scans = 0;
  while (pos + 4 <= buf.length) {
    if (buf[pos] !== 0xff) return null; // not a marker: leave the verdict to the decoder
    const marker = buf[pos + 1];
    if (marker === 0xff) {
      pos += 1;
    } else if (marker === 0xd9) {
      return null;
    } else if (STANDALONE.has(marker)) {
      pos += 2;
    } else {
      const length = buf.readUInt16BE(pos + 2);
      pos += 2 + length;
      if (marker === 0xda) {
        scans += 1;
        if (scans > MAX_JPEG_SCANS) return `JPEG has more than ${MAX_JPEG_SCANS} scans`;
        pos = endOfEntropyData(buf, pos);
      }
    }
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
    if (payload && inflatesTooFar(payload)) return `PNG ${type} chunk inflates to more than ${MAX_INFLATED_CHUNK} bytes`;
    pos += 12 + length;
  }
  return null;
}

const CHECKS = { jpeg: jpegScanBomb, png: pngChunkBomb };

/** The refusal reason for `buf` of `format`, or null. */
function decodeBomb(buf, format) {
  const check = CHECKS[format];
  return check ? check(buf) : null;
}

module.exports = { decodeBomb, MAX_JPEG_SCANS, MAX_INFLATED_CHUNK };
