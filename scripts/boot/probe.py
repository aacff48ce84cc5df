"""HTTP(S) checks of a booted worker from outside its container (run inside the private namespace).

python -m scripts.boot.probe URL TOKEN [TIMEOUT] [--ca CA_FILE --name NAME] [--cert CRT --key KEY]
                                                                          # prints one JSON object

With --ca, an https URL is verified against that CA only and the certificate must carry NAME
(the fleet's fixed name) while the connection goes to the URL's IP, as the coordinator does.
With --cert/--key the probe presents that client certificate (mutual TLS). A failure before
any HTTP status is {"healthz": {}, "error": "<exception class>: <message>"}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import requests
from PIL import Image, ImageChops
from requests.adapters import HTTPAdapter


class PinnedName(HTTPAdapter):
    """Connects to the URL's address but checks (and sends as SNI) the fleet's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["server_hostname"] = self.name
        kwargs["assert_hostname"] = self.name
        super().init_poolmanager(*args, **kwargs)


def session(ca: str | None, name: str | None, client: tuple[str, str] | None = None) -> requests.Session:
    http = requests.Session()
    # No REQUESTS_CA_BUNDLE (it would override `verify`) and no proxy from the environment.
    http.trust_env = False
    if ca:
        http.verify = ca
        http.mount("https://", PinnedName(name))
    http.cert = client
    return http


def gradient_png(width: int = 24, height: int = 10) -> tuple[bytes, Image.Image]:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 10 % 256, y * 25 % 256, (x + y) * 7 % 256) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image


def wait_healthy(http: requests.Session, url: str, timeout: float) -> tuple[dict, str]:
    """(/healthz body, "") once it answers 200, or ({}, the last failure) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = http.get(f"{url}/healthz", timeout=3)
            if reply.status_code == 200:
                return reply.json(), ""
        except requests.RequestException as exc:
            last_error = f"{type(exc).__name__}: {str(exc)[-300:]}"
        else:
            last_error = f"HTTP {reply.status_code}"
        if time.monotonic() > deadline:
            return {}, last_error
        time.sleep(0.3)


def probe(http: requests.Session, url: str, token: str, timeout: float) -> dict:
    health, error = wait_healthy(http, url, timeout)
    if error:
        return {"healthz": {}, "error": error}
    result = {"healthz": health, "healthy_at": time.time()}
    body, image = gradient_png()
    headers = {"Content-Type": "image/png"}
    result["no_token_status"] = http.post(
        f"{url}/process?op=grayscale", data=body, headers=headers, timeout=30
    ).status_code
    reply = http.post(
        f"{url}/process?op=grayscale&format=png",
        data=body,
        timeout=30,
        headers={**headers, "Authorization": f"Bearer {token}"},
    )
    result["token_status"] = reply.status_code
    if reply.status_code == 200:
        got = Image.open(io.BytesIO(reply.content)).convert("RGB")
        want = image.convert("L").convert("RGB")
        result["size"] = list(got.size)
        result["max_pixel_diff"] = max(high for _, high in ImageChops.difference(got, want).getextrema())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("timeout", nargs="?", type=float, default=60.0)
    parser.add_argument("--ca", help="PEM file: the only CA trusted for an https URL")
    parser.add_argument("--name", help="DNS name the certificate must carry (with --ca)")
    parser.add_argument("--cert", help="PEM file: a client certificate to present (with --key)")
    parser.add_argument("--key", help="PEM file: the client certificate's key")
    args = parser.parse_args(argv)
    client = (args.cert, args.key) if args.cert else None
    print(json.dumps(probe(session(args.ca, args.name, client), args.url, args.token, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
