"""The AWS side of a first boot, run inside the private namespace: IMDSv2, S3 and SSM over TLS, proxy relay.

- IMDSv2 on 169.254.169.254:80: a session token (PUT), then instance-profile credentials.
- S3 and SSM: one moto server behind TLS on the bridge address, with a certificate for the
  bucket's virtual-host names and SSM's regional name signed by the test's CA; the release
  objects and the parameters (a JSON file, scripts/boot/ssm.py) are put in before `ready`.
  `--deny-s3` answers every object read with 403 AccessDenied, as S3 does when IAM says no.
- A TCP relay from the bridge's port 3128 to the allow-listing proxy's Unix socket.

    python -m scripts.boot.standins --cert C --key K --proxy-socket S --bucket B --region R \
        --object KEY=PATH ... [--parameters FILE] [--deny-s3]

It prints `ready <port>`: moto's plain-HTTP setup port on the namespace's 127.0.0.1, through
which the test changes parameters later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import socketserver
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scripts.boot import ssm
from scripts.boot.netplan import GATEWAY, IMDS, PROXY_PORT

ROLE_NAME = "worker-release-reader"


class ImdsHandler(BaseHTTPRequestHandler):
    token = "boot-test-imds-token"

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self.reply(200, self.token)
        else:
            self.reply(400, "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self.reply(401, "")  # IMDSv2 only, like the instances (http_tokens=required)
            return
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            self.reply(200, ROLE_NAME)
        elif self.path == base + ROLE_NAME:
            expires = (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.reply(
                200,
                json.dumps(
                    {
                        "Code": "Success",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": "ASIABOOTTEST",
                        "SecretAccessKey": "boot-test",
                        "Token": "boot-test-session",
                        "Expiration": expires,
                    }
                ),
            )
        else:
            self.reply(404, "")


def deny_reads(app):
    """WSGI wrapper: every GET answers 403 AccessDenied (the instance profile lost its grant)."""
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message></Error>"
    )

    def wrapped(environ, start_response):
        if environ["REQUEST_METHOD"] == "GET":
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


class Relay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def relay_handler(socket_path: str):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(socket_path)
            pump = threading.Thread(target=copy, args=(upstream, self.request), daemon=True)
            pump.start()
            copy(self.request, upstream)
            pump.join(timeout=300)

    return Handler


def copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def start_aws(args) -> int:
    """Returns the plain-HTTP setup port."""
    import boto3
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    setup = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=setup.serve_forever, daemon=True).start()
    client = boto3.client(
        "s3",
        region_name=args.region,
        endpoint_url=f"http://127.0.0.1:{setup.port}",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    extra = {} if args.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": args.region}}
    client.create_bucket(Bucket=args.bucket, **extra)
    for item in args.object:
        key, path = item.split("=", 1)
        with open(path, "rb") as body:
            client.put_object(Bucket=args.bucket, Key=key, Body=body.read())
    if args.parameters:
        ssm.put_all(ssm.client(f"http://127.0.0.1:{setup.port}", args.region), args.parameters)
    served = deny_reads(app) if args.deny_s3 else app
    tls = make_server(GATEWAY, 443, served, threaded=True, ssl_context=(args.cert, args.key))
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    return setup.port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--cert", "--key", "--proxy-socket", "--bucket", "--region"):
        parser.add_argument(name, required=True)
    parser.add_argument("--object", action="append", default=[], help="KEY=PATH to put in the bucket")
    parser.add_argument("--parameters", help="JSON file {name: [type, value]} to put in Parameter Store")
    parser.add_argument("--deny-s3", action="store_true")
    args = parser.parse_args(argv)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    imds = ThreadingHTTPServer((IMDS, 80), ImdsHandler)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    relay = Relay((GATEWAY, PROXY_PORT), relay_handler(args.proxy_socket))
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    setup_port = start_aws(args)
    print(f"ready {setup_port}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
