"""worker-python's body read: a body of known length goes from gunicorn's paced socket straight
into one buffer (body.read_direct), keeps what follows it for gunicorn, and a body that ends
early is 400 with the connection marked for closing. Real gunicorn readers on a socketpair."""

from __future__ import annotations

import socket
import threading

import pytest
from flask import Flask, g
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader
from worker_python.body import read_direct
from worker_python.errors import ApiError
from worker_python.wire import PacedSocket

BODY = bytes(range(256)) * 40_000  # ~10 MB: many recv() calls
NEXT_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def app_context():
    with Flask(__name__).app_context():
        yield


def gunicorn_body(sent: bytes, length: int, ahead: int, close: bool = True):
    """(environ, body, unreader) as gunicorn hands them to the app after the headers, with
    `ahead` bytes of the body already read with the headers; `sent` follows on the socket."""
    ours, theirs = socket.socketpair()

    def send():
        theirs.sendall(sent[ahead:])
        if close:
            theirs.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    unreader = SocketUnreader(PacedSocket(ours))
    unreader.unread(sent[:ahead])
    body = Body(LengthReader(unreader, length))
    environ = {"gunicorn.socket": unreader.sock, "wsgi.input": body}
    return environ, body, unreader, sender


@pytest.mark.parametrize("ahead", [0, 1000, len(BODY) + len(NEXT_REQUEST)])
def test_a_known_length_body_is_read_whole_and_what_follows_stays_gunicorns(app_context, ahead):
    environ, body, unreader, sender = gunicorn_body(BODY + NEXT_REQUEST, len(BODY), ahead)
    read = read_direct(environ, len(BODY))
    assert read == BODY and type(read) is bytes  # decode's BytesIO shares bytes; it would copy a bytearray
    assert body.reader.length == 0 and body.read(8192) == b""  # gunicorn will not wait for it again
    assert unreader.read(len(NEXT_REQUEST)) == NEXT_REQUEST  # a pipelined request is not lost
    sender.join(5)


def test_a_body_that_ends_early_is_400_and_closes(app_context):
    environ, body, _, sender = gunicorn_body(BODY[:5000], len(BODY), 100)
    with pytest.raises(ApiError) as caught:
        read_direct(environ, len(BODY))
    assert (caught.value.status, caught.value.code) == (400, "bad_image")
    assert "ended after 5000 of" in caught.value.message
    assert body.failed and g.body_read is False
    sender.join(5)


def test_other_bodies_take_the_stream_path(app_context):
    environ, body, unreader, sender = gunicorn_body(b"x" * 100, 100, 0)
    assert read_direct(environ, None) is None  # no Content-Length
    assert read_direct({**environ, "gunicorn.socket": object()}, 100) is None  # not our paced socket
    assert read_direct({**environ, "wsgi.input": Body(ChunkedReader(None, unreader))}, 100) is None
    body.read(10)  # the app began reading: the rest is not ours to take
    assert read_direct(environ, 100) is None
    assert body.read(100) == b"x" * 90
    sender.join(5)
