'use strict';
// The wire: the HTTP server's timeouts and its own errors, reading bodies and multipart,
// refusing early and closing, writing replies at a minimum rate. No routes, no pixels.

const http = require('node:http');
const https = require('node:https');
const busboy = require('busboy');

const { HttpError } = require('./errors');
const { tooLarge } = require('./params');

const HEADERS_TIMEOUT_MS = 5_000;
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 120_000;
// Idle connections (TLS handshake or headers pending, or kept alive between requests) past
// this many: a new one closes the one idle longest, as worker-python's MAX_IDLE_CONNECTIONS.
// The 5 s timers still close each; without a cap a client with no token could hold as many as
// it opens in 5 s (descriptors: Node raises its soft limit to the hard one; memory).
const MAX_IDLE_CONNECTIONS = 1_000;
// A refused request: at most this much more of its body is read, then the socket is closed.
const LINGER_BYTES = 64 * 1024;
const LINGER_MS = 1_000;
// A reply must be read at this rate on average after the allowance, else it is cut off.
const REPLY_ALLOWANCE_MS = 10_000;
const REPLY_MIN_BYTES_PER_S = 64 * 1024;
const REPLY_CHUNK_BYTES = 256 * 1024;

const oneLine = (text) => String(text).replace(/\s+/g, ' ').trim().slice(0, 500);

function sendError(res, status, code, message, headers = {}) {
  if (res.headersSent || res.destroyed) return;
  res.set(headers);
  res.status(status).json({ error: { code, message: oneLine(message) } });
}

/**
 * Answers at once with `Connection: close`, then reads at most LINGER_BYTES or LINGER_MS more
 * of the body (so the client can still read the answer) and closes. An unauthenticated
 * client can never make the worker read a large body.
 */
function refuse(req, res, status, code, message, headers = {}) {
  const socket = req.socket;
  if (socket && !socket.destroyed) lingerThenClose(req, res, socket);
  sendError(res, status, code, message, { ...headers, Connection: 'close' });
}

function lingerThenClose(req, res, socket) {
  let seen = 0;
  let bodyDone = req.complete;
  let replyDone = false;
  const close = () => {
    clearTimeout(timer);
    socket.destroy();
  };
  const timer = setTimeout(close, LINGER_MS);
  // Node would destroy the socket the moment the reply is flushed (a reset if body bytes are
  // still unread) or, without Connection: close, read the whole body to reuse it.
  socket.destroySoon = function halfClose() {
    if (this.writable) this.end();
  };
  req.on('data', (chunk) => {
    seen += chunk.length;
    if (seen > LINGER_BYTES) close();
  });
  req.on('end', () => {
    bodyDone = true;
    if (replyDone) close();
  });
  req.on('error', close);
  res.on('finish', () => {
    replyDone = true;
    if (bodyDone) close();
  });
  socket.once('close', () => clearTimeout(timer));
}

/**
 * Reads the request body, failing with 413 as soon as the counted size passes maxBytes.
 * With a Content-Length the buffer is allocated once, so nothing is copied twice.
 */
function readBody(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.get('content-length'));
    const preallocated = Number.isSafeInteger(declared) && declared <= maxBytes ? Buffer.allocUnsafe(declared) : null;
    const chunks = [];
    let received = 0;
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk) => {
      if (received + chunk.length > maxBytes) {
        finish(tooLarge(received + chunk.length, maxBytes));
        return;
      }
      if (preallocated && received + chunk.length <= preallocated.length) chunk.copy(preallocated, received);
      else chunks.push(chunk);
      received += chunk.length;
    };
    const onEnd = () => {
      if (preallocated && chunks.length === 0) finish(null, preallocated.subarray(0, received));
      else finish(null, Buffer.concat(preallocated ? [preallocated.subarray(0, received), ...chunks] : chunks));
    };
    const onError = (err) => finish(Object.assign(new Error('request stream failed'), { cause: err, aborted: true }));
    const onAborted = () => finish(Object.assign(new Error('client went away'), { aborted: true }));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
  });
}

/** A busboy parser for `headers`; 400 bad_image when they cannot start a multipart parse. */
function multipartParser(headers, body) {
  try {
    // busboy gives a part without a filename as a string: latin1 keeps its bytes intact.
    return busboy({
      headers,
      defCharset: 'latin1',
      limits: { files: 8, fields: 64, parts: 72, fieldSize: body.length },
    });
  } catch (err) {
    throw new HttpError(400, 'bad_image', `multipart body cannot be read: ${oneLine(err.message)}`);
  }
}

/**
 * Collects the parts named `image` from `parser` into `seen.found`; `seen.failed` holds the
 * first fault (a second `image` part, a part stream that errs). `fail` records one.
 */
function collectImagePart(parser) {
  const seen = { found: null, images: 0, failed: null };
  const fail = (err) => {
    seen.failed ??= err;
  };
  const take = (bytes) => {
    seen.images += 1;
    if (seen.images > 1) fail(new HttpError(400, 'bad_param', 'multipart body has more than one "image" part'));
    seen.found = bytes;
  };
  parser.on('file', (name, stream) => {
    stream.on('error', (err) =>
      fail(new HttpError(400, 'bad_image', `multipart part ends early: ${oneLine(err.message)}`)),
    );
    if (name !== 'image') {
      stream.resume();
      return;
    }
    const parts = [];
    stream.on('data', (chunk) => parts.push(chunk));
    stream.on('end', () => take(Buffer.concat(parts)));
  });
  parser.on('field', (name, value) => {
    if (name === 'image') take(Buffer.from(value, 'latin1'));
  });
  return { seen, fail };
}

/**
 * The bytes of the multipart part named `image` (with or without a filename); null when
 * there is none. Two `image` parts: 400 bad_param; a body that ends inside a part or has no
 * closing boundary: 400 bad_image. Every stream busboy hands over has an error listener.
 */
function multipartImage(headers, body) {
  return new Promise((resolve, reject) => {
    const parser = multipartParser(headers, body); // a throw here rejects the promise
    const { seen, fail } = collectImagePart(parser);
    parser.on('close', () => (seen.failed ? reject(seen.failed) : resolve(seen.found)));
    parser.on('error', (err) => {
      fail(new HttpError(400, 'bad_image', `multipart body is malformed: ${oneLine(err.message)}`));
      // 'close' may never come after an error; settle once the part streams' errors are in.
      setImmediate(() => reject(seen.failed));
    });
    parser.end(body);
  });
}

/**
 * Writes `parts` (Buffers, in order) as the body and resolves once the reply is fully
 * handed to the kernel (true) or the connection is gone (false). A client that has not
 * taken `minBytesPerSecond` on average since `allowanceMs` after the start is cut off.
 */
function writeReply(res, parts, { allowanceMs = REPLY_ALLOWANCE_MS, minBytesPerSecond = REPLY_MIN_BYTES_PER_S } = {}) {
  return new Promise((resolve) => {
    const started = Date.now();
    let flushed = 0;
    const check = setInterval(
      () => {
        const late = Date.now() - started - allowanceMs;
        if (late > 0 && flushed < (late / 1000) * minBytesPerSecond) res.destroy();
      },
      Math.min(1000, Math.max(50, allowanceMs / 4)),
    );
    res.once('close', () => {
      clearInterval(check);
      resolve(res.writableFinished);
    });
    const chunks = parts.flatMap((part) => slices(part, REPLY_CHUNK_BYTES));
    let next = 0;
    const pump = () => {
      while (next < chunks.length && !res.destroyed) {
        const chunk = chunks[next];
        next += 1;
        const counted = () => {
          flushed += chunk.length;
        };
        if (next === chunks.length) {
          res.end(chunk, counted);
          return;
        }
        if (!res.write(chunk, counted)) {
          res.once('drain', pump);
          return;
        }
      }
      if (chunks.length === 0) res.end();
    };
    pump();
  });
}

function slices(buf, size) {
  const out = [];
  for (let at = 0; at < buf.length; at += size) out.push(buf.subarray(at, at + size));
  return out;
}

// ---------------------------------------------------------------- the server's own errors

const CHUNK_ERRORS = ['HPE_INVALID_CHUNK_SIZE', 'HPE_CHUNK_EXTENSIONS_OVERFLOW', 'HPE_STRICT', 'HPE_INVALID_EOF_STATE'];

function classifyClientError(err) {
  if (err.code === 'HPE_HEADER_OVERFLOW') return [431, 'too_large', 'the request headers are too large'];
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return [408, 'bad_param', 'the request did not arrive in time'];
  if (CHUNK_ERRORS.includes(err.code)) return [400, 'bad_image', 'the chunked body is malformed'];
  return [400, 'bad_param', 'the request is not valid HTTP/1.1'];
}

// A failed TLS handshake (https forwards it as a clientError): there is no HTTP to answer in.
const isTlsFailure = (err) => /^ERR_(TLS|SSL)_/.test(err.code || '') || err.library !== undefined;

/** Node's parse errors as the contract's JSON (never quoting the request: it may hold a token). */
function answerClientError(err, socket) {
  if (err.code === 'ECONNRESET' || isTlsFailure(err) || !socket.writable) {
    socket.destroy();
    return;
  }
  // A pipelined request's reply still being written on this connection goes first.
  const current = socket._httpMessage;
  if (current && current.headersSent && !current.writableFinished) {
    current.once('finish', () => answerClientError(err, socket));
    current.once('close', () => current.writableFinished || socket.destroy());
    return;
  }
  const [status, code, message] = classifyClientError(err);
  const body = JSON.stringify({ error: { code, message } });
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
}

/**
 * The TLS half of the server options: TLS 1.2+, a client certificate signed by `ca` required
 * when there is one (mutual TLS), and a handshake that must end within the header timeout, so
 * a peer that never finishes it (or speaks plain HTTP) is cut off like a slow header sender.
 */
function tlsServerOptions(tlsOptions) {
  const mutual = Boolean(tlsOptions.ca);
  return { ...tlsOptions, requestCert: mutual, rejectUnauthorized: mutual, handshakeTimeout: HEADERS_TIMEOUT_MS };
}

/**
 * Keeps at most `max` of `server`'s connections idle: on a new connection past the cap the one
 * idle longest is destroyed. A connection is idle from accept until its first request arrives,
 * and again once its last reply is done (a pipelined one counts as busy until all are). Keyed on
 * the accepted socket: an https server's TLSSocket wraps it (`_parent`).
 */
function capIdleConnections(server, max = MAX_IDLE_CONNECTIONS) {
  const idle = new Set(); // oldest first: a Set keeps insertion order
  const active = new WeakMap(); // accepted socket -> requests not yet answered on it
  server.on('connection', (socket) => {
    if (idle.size >= max) {
      const oldest = idle.values().next().value;
      idle.delete(oldest);
      oldest.destroy();
    }
    idle.add(socket);
    socket.once('close', () => idle.delete(socket));
  });
  server.on('request', (req, res) => {
    const socket = req.socket._parent ?? req.socket;
    idle.delete(socket);
    active.set(socket, (active.get(socket) ?? 0) + 1);
    res.once('close', () => {
      const left = active.get(socket) - 1;
      active.set(socket, left);
      if (left === 0 && !socket.destroyed) idle.add(socket);
    });
  });
  return idle;
}

/**
 * An http.Server for `app` (an https.Server with `tlsOptions`, from secrets.js) with the
 * contract's bounds: headers within 5 s, idle keep-alive connections closed after 5 s
 * (checked every second), at most MAX_IDLE_CONNECTIONS idle connections, and JSON for Node's
 * own errors.
 */
function createServer(app, tlsOptions = null) {
  const options = { connectionsCheckingInterval: 1_000 };
  const server = tlsOptions
    ? https.createServer({ ...options, ...tlsServerOptions(tlsOptions) }, app)
    : http.createServer(options, app);
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  server.on('clientError', answerClientError);
  capIdleConnections(server);
  // A client-initiated renegotiation (a new handshake for the server to pay for on an open
  // connection; Node allows 3 per 10 minutes) is an error that closes the connection, as
  // OpenSSL 3 does for worker-python.
  if (tlsOptions) server.on('secureConnection', (socket) => socket.disableRenegotiation());
  return server;
}

module.exports = {
  oneLine,
  sendError,
  refuse,
  readBody,
  multipartImage,
  writeReply,
  createServer,
  capIdleConnections,
  MAX_IDLE_CONNECTIONS,
};
