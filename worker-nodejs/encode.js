'use strict';
// Pixels to the reply's bytes: PNG, JPEG and WebP through sharp, raw as binary PPM (P6), and
// a 1-channel gray PNG when channels=auto asks for it. No I/O, no config.

const sharp = require('sharp');

const { ImageError } = require('./errors');
const { STEP_BYTES, inSteps } = require('./steps');

const FORMATS = ['png', 'jpeg', 'webp', 'raw'];
// channels=auto: a PNG reply of an op whose result is gray by definition carries 1 channel.
const CHANNELS = ['3', 'auto'];
const GRAY_OPS = ['grayscale'];
// `compression` 0-9 also sets WebP's effort 0-6 as floor(compression * 2 / 3): the default 6
// keeps libwebp's default 4. Lossless at effort 0 and quality 1 (for lossless, quality is effort
// too) is what the coordinator asks for over a slow link: a 4000x1500 sepia strip is 5.2 MB in
// ~0.5 s CPU, 0.85 MB less than PNG level 6 (coordinator/README.md, "Wire formats").
const webpEffort = (compression) => Math.floor((compression * 2) / 3);
const CONTENT_TYPES = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  raw: 'image/x-portable-pixmap',
};

/** Binary PPM (P6, maxval 255) header of an RGB image. */
function ppmHeader({ width, height }) {
  return Buffer.from(`P6\n${width} ${height}\n255\n`, 'latin1');
}

function encodePpm(image) {
  const header = ppmHeader(image);
  return Buffer.concat([header, image.data], header.length + image.data.length);
}

/** True when the reply is 1-channel gray: asked with channels=auto, gray op, PNG out. */
function grayReply(op, format, channels) {
  return channels === 'auto' && GRAY_OPS.includes(op) && format === 'png';
}

/** The first channel of an RGB buffer whose channels are equal: width*height bytes. */
async function firstChannel(data, pause) {
  const gray = Buffer.allocUnsafe(data.length / 3);
  const take = (start, end) => {
    for (let i = start, j = start * 3; i < end; i += 1, j += 3) gray[i] = data[j];
  };
  await inSteps(gray.length, STEP_BYTES, take, pause);
  return gray;
}

/**
 * Encodes an image ({ width, height, data, channels: 3 (default) or 1 for gray });
 * params: quality (jpeg/webp), lossless (webp), compression (png). A 1-channel PNG uses
 * libpng's adaptive filtering: on a 4000x1500 photo strip at level 2 it gives 2.83 MB for
 * 3.77 MB (+0.1 s); on RGB photos it makes files larger and 2-3x slower, so it stays off.
 */
async function encodeImage(
  image,
  format,
  { quality = 90, lossless = false, compression = 6, timeoutSeconds = 0 } = {},
) {
  if (format === 'raw') return encodePpm(image);
  const channels = image.channels || 3;
  let pipeline = sharp(image.data, {
    raw: { width: image.width, height: image.height, channels },
    limitInputPixels: false,
  }).timeout({ seconds: timeoutSeconds });
  if (channels === 1) pipeline = pipeline.toColourspace('b-w');
  switch (format) {
    case 'png':
      return pipeline
        .png({ compressionLevel: compression, adaptiveFiltering: channels === 1 && compression > 0 })
        .toBuffer();
    case 'jpeg':
      return pipeline.jpeg({ quality }).toBuffer();
    case 'webp':
      return pipeline.webp({ quality, lossless, effort: webpEffort(compression) }).toBuffer();
    default:
      throw new ImageError('bad_param', 400, `unknown format ${JSON.stringify(format)}`);
  }
}

/**
 * The reply for a processed image: `parts`, Buffers to send in order (raw output is its
 * header and the pixels, so 18 MB of pixels are not copied just to prepend 20 bytes), their
 * total `length`, `contentType`, `width` and `height`. `job` is parseJob's result (op,
 * format, channels, quality, lossless, compression).
 */
async function encodeReply(image, { op, format = 'png', channels = '3', ...params }, pause) {
  let out = image;
  if (grayReply(op, format, channels)) {
    out = { width: image.width, height: image.height, data: await firstChannel(image.data, pause), channels: 1 };
  }
  // No timeout on encoding: its cost is linear in pixels already bounded by maxPixels, and a
  // 50 MP PNG at level 9 may rightly take long on a small instance.
  const { quality, lossless, compression } = params;
  const parts =
    format === 'raw'
      ? [ppmHeader(out), out.data]
      : [await encodeImage(out, format, { quality, lossless, compression })];
  return {
    parts,
    length: parts.reduce((sum, part) => sum + part.length, 0),
    contentType: CONTENT_TYPES[format],
    width: out.width,
    height: out.height,
  };
}

module.exports = { FORMATS, CHANNELS, CONTENT_TYPES, grayReply, encodePpm, encodeImage, encodeReply };
