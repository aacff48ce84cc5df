'use strict';
// What a request asks for and whether it may ask: its query, Accept, Authorization,
// Content-Type and Content-Length headers. Pure functions of header values and the query: no
// I/O, no config read. Every parser here is linear in its input (no backtracking).

const crypto = require('node:crypto');

const { HttpError } = require('./errors');
const { OPERATIONS } = require('./ops');
const { FORMATS, CHANNELS } = require('./encode');

const PRIMARY_OP = 'sepia';
const KNOWN_KEYS = ['op', 'format', 'quality', 'lossless', 'compression', 'radius', 'channels'];
const ACCEPT_TO_FORMAT = {
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'image/webp': 'webp',
  'image/x-portable-pixmap': 'raw',
};
const MAX_AUTHORIZATION_BYTES = 4096;
const INTEGER = /^[0-9]{1,3}$/;
const RADIUS = /^[0-9]{1,3}(\.[0-9]{1,6})?$/;
const BOOLEANS = { true: true, false: false, 1: true, 0: false };

const badParam = (message) => new HttpError(400, 'bad_param', message);
const shown = (value) => JSON.stringify(value).slice(0, 60);

/**
 * The token of `Authorization: Bearer <token>`, or null. The scheme is case-insensitive and
 * followed by one or more spaces (0x20; a tab is not a separator); a value over 4096 bytes is
 * refused unread.
 */
function bearerToken(header) {
  if (typeof header !== 'string' || header.length > MAX_AUTHORIZATION_BYTES) return null;
  const space = header.indexOf(' ');
  if (space !== 6 || header.slice(0, 6).toLowerCase() !== 'bearer') return null;
  let start = space;
  while (start < header.length && header.charCodeAt(start) === 0x20) start += 1;
  return start < header.length ? header.slice(start) : null;
}

/** sha256 both sides first, so the comparison takes the same time whatever the lengths. */
function tokenMatches(presented, expected) {
  const a = crypto.createHash('sha256').update(presented, 'utf8').digest();
  const b = crypto.createHash('sha256').update(expected, 'utf8').digest();
  return crypto.timingSafeEqual(a, b);
}

/**
 * True when `Authorization` carries one of the accepted bearer tokens (a list of 1 or 2 during
 * a rotation; null or empty: none is required). Every token is compared, match or not.
 */
function authorized(header, tokens) {
  if (!tokens || tokens.length === 0) return true;
  const presented = bearerToken(header);
  if (presented === null) return false;
  return tokens.reduce((found, token) => tokenMatches(presented, token) || found, false);
}

/** The media type of a Content-Type header, lower case, without parameters. */
function mediaType(header) {
  return (header || '').split(';')[0].trim().toLowerCase();
}

const tooLarge = (size, maxBytes) =>
  new HttpError(413, 'too_large', `body of ${size} bytes is over the ${maxBytes} byte limit`);

/** A 413 from Content-Length alone, before any of the body is read; null when it fits. */
function declaredTooLarge(contentLength, maxBytes) {
  const length = contentLength === undefined ? null : Number(contentLength);
  return length !== null && length > maxBytes ? tooLarge(length, maxBytes) : null;
}

/**
 * The refusal a request gets before its body is needed, in the contract's order (413 by
 * Content-Length, 415, 400 for parameters), or null. `request` holds the query and the
 * contentLength, contentType and accept header values.
 */
function refusalBeforeBody({ query, contentLength, contentType, accept }, maxBytes) {
  const large = declaredTooLarge(contentLength, maxBytes);
  if (large) return large;
  const type = mediaType(contentType);
  if (type !== 'multipart/form-data' && !type.startsWith('image/')) {
    const shownType = JSON.stringify(type || 'none');
    return new HttpError(
      415,
      'unsupported_type',
      `content type ${shownType} is neither image/* nor multipart/form-data`,
    );
  }
  try {
    parseJob(query, accept);
  } catch (err) {
    if (err instanceof HttpError) return err;
    throw err;
  }
  return null;
}

/** The one value of a known key, or undefined; a key given twice is 400 bad_param. */
function single(query, key) {
  const value = query[key];
  if (Array.isArray(value)) throw badParam(`${key} is given more than once`);
  return value;
}

function integerParam(query, key, fallback, min, max) {
  const raw = single(query, key);
  if (raw === undefined) return fallback;
  const value = INTEGER.test(raw) ? Number(raw) : NaN;
  if (!(value >= min && value <= max)) throw badParam(`${key} must be an integer ${min}-${max}, got ${shown(raw)}`);
  return value;
}

function radiusParam(query) {
  const raw = single(query, 'radius');
  if (raw === undefined) return 2;
  const value = RADIUS.test(raw) ? Number(raw) : NaN;
  if (!(value > 0 && value <= 50)) throw badParam(`radius must be a number with 0 < radius <= 50, got ${shown(raw)}`);
  return value;
}

function choiceParam(query, key, fallback, choices) {
  const raw = single(query, key);
  if (raw === undefined) return fallback;
  if (!choices.includes(raw)) throw badParam(`${key} must be one of ${choices.join(', ')}, got ${shown(raw)}`);
  return raw;
}

function booleanParam(query, key, fallback) {
  const raw = single(query, key);
  if (raw === undefined) return fallback;
  if (!Object.hasOwn(BOOLEANS, raw)) throw badParam(`${key} must be true, false, 1 or 0, got ${shown(raw)}`);
  return BOOLEANS[raw];
}

function formatFromAccept(accept) {
  for (const part of (accept || '').split(',')) {
    const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    const q = params.find((p) => p.startsWith('q='));
    if (q && !(Number(q.slice(2)) > 0)) continue;
    if (ACCEPT_TO_FORMAT[type]) return ACCEPT_TO_FORMAT[type];
  }
  return 'png';
}

/**
 * Everything the query and Accept header ask for; throws HttpError 400 unknown_op /
 * bad_param. Repeated known keys are checked first, so `op=a&op=b` is bad_param.
 */
function parseJob(query, accept) {
  for (const key of KNOWN_KEYS) single(query, key);
  const op = single(query, 'op') ?? PRIMARY_OP;
  if (!OPERATIONS.includes(op)) {
    throw new HttpError(400, 'unknown_op', `unknown op ${shown(op)}; offered: ${OPERATIONS.join(', ')}`);
  }
  return {
    op,
    format: choiceParam(query, 'format', formatFromAccept(accept), FORMATS),
    quality: integerParam(query, 'quality', 90, 1, 100),
    lossless: booleanParam(query, 'lossless', false),
    compression: integerParam(query, 'compression', 6, 0, 9),
    radius: radiusParam(query),
    channels: choiceParam(query, 'channels', '3', CHANNELS),
  };
}

module.exports = {
  PRIMARY_OP,
  bearerToken,
  tokenMatches,
  authorized,
  mediaType,
  tooLarge,
  refusalBeforeBody,
  parseJob,
  formatFromAccept,
};
