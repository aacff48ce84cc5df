"""The threaded loopback TCP server under the fault proxy and the hostile worker: one place
for binding, the serving thread, stop and the context manager. Subclasses handle a connection."""

from __future__ import annotations

import socket
import socketserver
import threading


class ThreadedSocketServer:
    """Call `_serve()` from __init__; override `_handle(client)`. `_stopping` is set by stop()."""

    thread_name = "socket-server"

    def _serve(self, host: str = "127.0.0.1", receive_buffer: int | None = None) -> None:
        self._stopping = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                owner._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, 0), Handler, bind_and_activate=False)
        if receive_buffer:  # inherited by accepted sockets
            self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        name = f"{self.thread_name}-{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name=name)

    def _handle(self, client: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def _received_head(client: socket.socket, limit: int = 65536) -> bytes:
        """What the client sent up to its headers' blank line (and any bytes read past it), at
        most about `limit` bytes; less when it closes first."""
        data = b""
        while b"\r\n\r\n" not in data and len(data) < limit:
            chunk = client.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
