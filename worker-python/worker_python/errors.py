"""Every refusal the worker sends, each carrying the contract's HTTP status and error code.

The image modules raise only ImageError subclasses for untrusted bytes, and request parsing
raises ApiError, so the HTTP layer never sends a 500 for bad input."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ImageError(Exception):
    status = 400
    code = "bad_image"


class BadImage(ImageError):
    status, code = 400, "bad_image"


class UnsupportedFormat(ImageError):
    status, code = 415, "unsupported_type"


class TooManyPixels(ImageError):
    status, code = 413, "too_many_pixels"


class CannotEncode(ImageError):
    status, code = 400, "bad_param"
