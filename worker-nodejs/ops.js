'use strict';
// The operations, in place on an RGB image ({ width, height, data }): grayscale, sepia and
// invert per pixel, and blur as a bit-exact port of Pillow's GaussianBlur. Each has a plain
// form and a stepped one (steps.js) that yields to the event loop. No I/O, no config.

const { ImageError } = require('./errors');
const { STEP_BYTES, nextTurn, inSteps, runSteps, runAtOnce } = require('./steps');

const OPERATIONS = ['grayscale', 'sepia', 'invert', 'blur'];

const unknownOp = (op) => new ImageError('unknown_op', 400, `unknown op ${JSON.stringify(op)}`);

// ---------------------------------------------------------------- per-pixel ops

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
  runAtOnce(gaussianBlurSteps(image, sigma));
  return image.data;
}

/** The same blur, awaiting `pause` (other requests, /healthz run) between steps. */
async function gaussianBlurInPlaceAsync(image, sigma, pause = nextTurn) {
  await runSteps(gaussianBlurSteps(image, sigma), pause);
  return image.data;
}

/** applyOperation in steps, awaiting `pause` between them; the result is the same. */
async function applyOperationAsync(image, op, { radius = 2 } = {}, pause = nextTurn) {
  if (op === 'blur') {
    await gaussianBlurInPlaceAsync(image, radius, pause);
    return image;
  }
  const range = PIXEL_OPS[op];
  if (!range) throw unknownOp(op);
  await inSteps(image.data.length, STEP_BYTES, (start, end) => range(image.data, start, end), pause);
  return image;
}

/** Applies one op to image.data in place, at once, and returns the image. */
function applyOperation(image, op, { radius = 2 } = {}) {
  if (op === 'blur') {
    gaussianBlurInPlace(image, radius);
    return image;
  }
  const range = PIXEL_OPS[op];
  if (!range) throw unknownOp(op);
  range(image.data, 0, image.data.length);
  return image;
}

module.exports = {
  OPERATIONS,
  grayscaleInPlace,
  sepiaInPlace,
  invertInPlace,
  boxRadiusForGaussian,
  boxWeights,
  gaussianBlurInPlace,
  gaussianBlurInPlaceAsync,
  applyOperation,
  applyOperationAsync,
};
