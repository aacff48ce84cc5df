'use strict';
// Every refusal the worker sends carries the contract's HTTP status and error code. Request
// parsing and the wire raise HttpError; the pixel modules raise only ImageError for bad
// bytes, so the HTTP layer never answers 500 for bad input.

/** An answer the client caused; status and code go straight into the JSON error. */
class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A failure caused by the input image; `code` and `status` go straight into the HTTP error. */
class ImageError extends Error {
  constructor(code, status, message) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const badImage = (message) => new ImageError('bad_image', 400, message);
const unsupported = (message) => new ImageError('unsupported_type', 415, message);

module.exports = { HttpError, ImageError, badImage, unsupported };
