'use strict';
// BMP files built byte by byte for the decoder tests: sharp cannot write RLE8, and a bomb must
// be exactly the bytes a hostile client would send.

/**
 * An 8-bit RLE BMP (bottom-up, BITMAPINFOHEADER): `palette` is B, G, R, X bytes per entry,
 * `codes` the RLE8 stream; `colorsUsed` 0 means the full 256 entries.
 */
function rle8Bmp(width, height, palette, codes, colorsUsed = 0) {
  const offset = 14 + 40 + palette.length;
  const head = Buffer.alloc(54);
  head.write('BM', 0, 'latin1');
  head.writeUInt32LE(offset + codes.length, 2);
  head.writeUInt32LE(offset, 10);
  head.writeUInt32LE(40, 14);
  head.writeInt32LE(width, 18);
  head.writeInt32LE(height, 22);
  head.writeUInt16LE(1, 26);
  head.writeUInt16LE(8, 28);
  head.writeUInt32LE(1, 30);
  head.writeUInt32LE(codes.length, 34);
  head.writeUInt32LE(colorsUsed, 46);
  return Buffer.concat([head, palette, Buffer.from(codes)]);
}

module.exports = { rle8Bmp };
