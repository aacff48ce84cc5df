"""Allow-listing forward proxy on a Unix socket (runs in the host's network namespace).

CONNECT host:443 and plain `GET http://host/...` only to the package registries; anything else
gets 403. The namespace side reaches it through a TCP relay (scripts.boot.standins), so the
private network has no interface and no route towards the host.

    python -m scripts.boot.proxy SOCKET [--deny HOST ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from urllib.parse import urlsplit

from scripts.boot.netplan import REGISTRY_HOSTS

IDLE_SECONDS = 120


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await asyncio.wait_for(reader.read(65536), IDLE_SECONDS):
            writer.write(data)
            await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


def target_of(method: str, target: str) -> tuple[str, int, str]:
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return host, int(port), ""
    url = urlsplit(target)
    path = url.path + (f"?{url.query}" if url.query else "")
    return url.hostname or "", url.port or 80, path or "/"


async def handle(reader, writer, allowed: set[str], budget: dict[str, int], log) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        host, port, path = target_of(method, target)
    except (TimeoutError, ValueError, OSError, asyncio.IncompleteReadError):
        writer.close()
        return
    if host in budget:  # --budget: this host's first N connections only
        budget[host] -= 1
        if budget[host] < 0:  # then it is cut off: the connection just drops
            log(f"dropped {method} {host}:{port}")
            writer.close()
            return
    if host not in allowed or port not in (80, 443):
        log(f"refused {method} {host}:{port}")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (TimeoutError, OSError) as exc:
        log(f"upstream {host}:{port} failed: {exc}")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()
        return
    log(f"{method} {host}:{port}")
    if method == "CONNECT":
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    else:
        kept = [h for h in headers if h and not h.lower().startswith(("proxy-", "connection:"))]
        lines = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
        up_writer.write("\r\n".join(lines).encode("latin-1"))
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def serve(socket_path: str, allowed: set[str], budget: dict[str, int]) -> None:
    with open(socket_path + ".log", "a", buffering=1) as log_file:

        def log(line: str) -> None:
            log_file.write(line + "\n")

        server = await asyncio.start_unix_server(lambda r, w: handle(r, w, allowed, budget, log), socket_path)
        os.chmod(socket_path, 0o600)
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("--deny", action="append", default=[], help="registry host to refuse too")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="HOST=N",
        help="let HOST's first N connections through, then refuse it",
    )
    args = parser.parse_args(argv)
    allowed = set(REGISTRY_HOSTS) - set(args.deny)
    budget = {host: int(n) for host, n in (item.split("=", 1) for item in args.budget)}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.socket, allowed, budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
