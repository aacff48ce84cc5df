"""The /process request read from Flask in the contract's check order: 413 by length before
any body byte (rule 3), 415 by type, the body with its cap, the parameters (params.py), then
the image bytes, from the body or its multipart part named `image` (rule 6)."""

from __future__ import annotations

import io

from flask import g, request
from gunicorn.http.body import Body, LengthReader
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from worker_python.errors import ApiError
from worker_python.ops import PRIMARY_OP
from worker_python.params import Job, parse_job, single_values
from worker_python.wire import PacedSocket

READ_CHUNK = 1 << 20
MAX_MULTIPART_PARTS = 1000


def read_job(max_bytes: int) -> tuple[Job, bytes]:
    """The checked Job and the image bytes; sets g.body_read, g.bytes_in and g.op for the
    reply (refused before the body: close) and the log line."""
    mimetype = request.mimetype
    is_multipart = mimetype == "multipart/form-data"
    check_length(max_bytes)
    if not (mimetype.startswith("image/") or is_multipart):
        raise ApiError(
            415, "unsupported_type", f"Content-Type {mimetype or '(none)'} is neither image/* nor multipart/form-data"
        )
    body = read_body(max_bytes)
    g.body_read = True
    g.bytes_in = len(body)
    params = single_values(request.args)
    g.op = params.get("op", PRIMARY_OP)
    job = parse_job(params, request.headers.get("Accept", ""))
    if not body:
        raise ApiError(400, "missing_image", "the request has no image bytes")
    data = multipart_image(body, request.content_type or "") if is_multipart else body
    del body  # peak memory on big strips: keep one copy of the upload, and only until decoded
    if not data:
        raise ApiError(400, "missing_image", "the request has no image bytes")
    return job, data


def check_length(max_bytes: int) -> None:
    """413 by Content-Length, before a byte of the body is read (rule 3)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "too_large", f"body of {length} bytes is over the {max_bytes} byte limit")


def read_body(max_bytes: int) -> bytes:
    """The request body, refusing more than max_bytes counted while reading a chunked body.
    A body that ends early, arrives too slowly or breaks the chunked framing is 400."""
    direct = read_direct(request.environ, request.content_length)
    if direct is not None:
        return direct
    chunks, total = [], 0
    stream = request.stream
    while True:
        try:
            chunk = stream.read(min(READ_CHUNK, max_bytes + 1 - total))
        except Exception as exc:  # the server's stream errors are the client's fault
            g.body_read = False  # the framing is lost: close the connection after the reply
            raise ApiError(400, "bad_image", f"the body ended early or is malformed ({type(exc).__name__})") from None
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, "too_large", f"body of {total} bytes is over the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def read_direct(environ: dict, length: int | None) -> bytes | None:
    """A body of known length straight from gunicorn's (paced) socket into one buffer, or None
    when gunicorn does not serve it that way (chunked, a test client) or a read has begun.
    gunicorn's reader copies each byte ~6 times (BytesIO writes, getvalue, slices): 140 ms for
    an 18 MB strip where recv_into takes 32 (scripts/worker_profile.py, --client lean).
    The bytes are received into a BytesIO's own buffer (getbuffer) and returned by getvalue(),
    which hands over that buffer without a copy once the view is released: a bytearray and
    bytes(buffer) cost a second fresh 17 MiB, ~11 ms of page faults per 6 MP strip with the
    1 MiB mmap threshold (server.tune_malloc). decode's BytesIO shares bytes, not a bytearray."""
    sock, body = environ.get("gunicorn.socket"), environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    if not (isinstance(sock, PacedSocket) and isinstance(body, Body) and isinstance(reader, LengthReader)):
        return None
    if length is None or reader.length != length or body.buf.tell():
        return None
    held = reader.unreader.take_buffered()  # read ahead with the headers
    reader.unreader.unread(held[length:])  # a pipelined next request stays gunicorn's
    buffer = io.BytesIO()
    if length:
        buffer.seek(length - 1)
        buffer.write(b"\0")  # sized once, zero-filled
    got = min(len(held), length)
    with buffer.getbuffer() as view:
        view[:got] = held[:got]
        while got < length:
            try:
                count = sock.recv_into(view[got:], length - got)
            except OSError:  # a reset, a broken TLS record: the body ended early, as on the stream path
                count = 0
            if not count:
                g.body_read, body.failed = False, True  # framing lost: close the connection after the reply
                raise ApiError(400, "bad_image", f"the body ended after {got} of {length} bytes")
            got += count
    reader.length = 0  # read: gunicorn must not wait for these bytes again
    return buffer.getvalue()  # the view is released: no copy


def multipart_image(body: bytes, content_type: str) -> bytes:
    """The bytes of the one part named `image`, with or without a filename (rule 6)."""
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise ApiError(400, "missing_image", "multipart body has no boundary parameter")
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_MULTIPART_PARTS)
    images, current, ended = [], None, False
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        while not ended:
            event = decoder.next_event()
            if isinstance(event, (Field, File)):
                current = [] if event.name == "image" else None
                if current is not None:
                    images.append(current)
            elif isinstance(event, Data) and current is not None:
                current.append(event.data)
            ended = isinstance(event, (Epilogue, NeedData))
    except Exception as exc:  # any parser error on untrusted bytes is the client's
        raise ApiError(400, "bad_image", f"cannot read the multipart body: {type(exc).__name__}") from None
    if not isinstance(event, Epilogue):
        raise ApiError(400, "bad_image", "the multipart body ends before its closing boundary")
    if len(images) > 1:
        raise ApiError(400, "bad_param", f"multipart body has {len(images)} parts named image; send one")
    if not images:
        raise ApiError(400, "missing_image", "multipart body has no part named image")
    return b"".join(images[0])
