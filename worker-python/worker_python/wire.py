"""What gunicorn puts on the wire, made to follow the contract: read and write deadlines on a
connection, no framework banner, `Connection: close` from the app honoured, and gunicorn's own
error replies as the contract's JSON instead of HTML."""

from __future__ import annotations

import json
import socket
import time

from gunicorn.http import errors as http_errors

# Rule 9/10 of the contract: a body must arrive, and a reply be read, at 64 KiB/s on average
# after a 10 s allowance; a slower peer is cut off and its thread (and slot) freed.
ALLOWANCE_SECONDS = 10.0
MIN_BYTES_PER_SECOND = 64 * 1024

_STATUS_TEXT = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
# gunicorn's parse errors, as (status, code, message): the message never quotes the request,
# since a malformed header line can hold the bearer token.
_PARSE_ERRORS = (
    ((http_errors.LimitRequestLine,), 414, "too_large", "the request line is too long"),
    ((http_errors.LimitRequestHeaders,), 431, "too_large", "the request headers are too large"),
    (
        (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
        400,
        "bad_image",
        "the chunked body is malformed",
    ),
    (
        (http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding),
        400,
        "bad_param",
        "a request header is malformed",
    ),
    ((http_errors.ParseException,), 400, "bad_param", "the request is not valid HTTP/1.1"),
)


class ReplyTooSlow(OSError):
    """The client read its reply slower than the contract's bound; the connection is closed."""


def json_error_reply(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error reply with the contract's JSON body, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def classify_parse_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for an error gunicorn raised while reading a request."""
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
        return 500, "internal", "internal error; see the worker log"  # the app's fault, not the client's
    for kinds, status, code, message in _PARSE_ERRORS:
        if isinstance(exc, kinds):
            return status, code, message
    return 500, "internal", "internal error; see the worker log"


class PacedSocket:
    """The connection's socket, with the contract's rate bounds on reading the body and on
    writing the reply. Reads past the bound see end-of-file (the parser then reports a body
    that ended early); a write past it raises ReplyTooSlow, which closes the connection."""

    def __init__(self, sock: socket.socket, clock=time.monotonic):
        self._sock, self._clock = sock, clock
        self._read_started = clock()
        self._received = 0
        self._write_started: float | None = None
        self._sent = 0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def _remaining(self, started: float, done: int) -> float:
        return started + ALLOWANCE_SECONDS + done / MIN_BYTES_PER_SECOND - self._clock()

    def recv(self, size: int) -> bytes:
        remaining = self._remaining(self._read_started, self._received)
        if remaining <= 0:
            return b""
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            return b""
        finally:
            self._sock.settimeout(None)
        self._received += len(data)
        return data

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        """recv() into a caller's buffer (no new bytes object per read), under the same bound."""
        remaining = self._remaining(self._read_started, self._received)
        if remaining <= 0:
            return 0
        self._sock.settimeout(remaining)
        try:
            count = self._sock.recv_into(buffer, nbytes)
        except TimeoutError:
            return 0
        finally:
            self._sock.settimeout(None)
        self._received += count
        return count

    def sendall(self, data) -> None:
        if self._write_started is None:
            self._write_started = self._clock()
        remaining = self._remaining(self._write_started, self._sent + len(data))
        self._sock.settimeout(max(remaining, 0.001))
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise ReplyTooSlow(f"reply not read at {MIN_BYTES_PER_SECOND} bytes/s") from None
        finally:
            self._sock.settimeout(None)
        self._sent += len(data)


def contract_headers(app):
    """WSGI middleware: drop gunicorn's `Server` header, and close the connection after a
    reply that says `Connection: close` (gunicorn treats that header as hop-by-hop and would
    otherwise keep the connection and drain the body, holding a thread for seconds)."""

    def wrapped(environ, start_response):
        server_reply = getattr(start_response, "__self__", None)  # gunicorn's Response

        def start(status, headers, exc_info=None):
            if server_reply is not None:
                if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                    server_reply.force_close()
                _drop_server_banner(server_reply)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


def _drop_server_banner(server_reply) -> None:
    default_headers = server_reply.default_headers

    def without_server() -> list[str]:
        return [line for line in default_headers() if not line.lower().startswith("server:")]

    server_reply.default_headers = without_server
