"""HTTP checks of a booted worker from outside its container (run inside the private namespace).

python -m scripts.boot.probe URL TOKEN      # prints one JSON object
"""

from __future__ import annotations

import io
import json
import sys
import time

import requests
from PIL import Image, ImageChops


def gradient_png(width: int = 24, height: int = 10) -> tuple[bytes, Image.Image]:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 10 % 256, y * 25 % 256, (x + y) * 7 % 256) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image


def wait_healthy(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = requests.get(f"{url}/healthz", timeout=3)
            if reply.status_code == 200:
                return reply.json()
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.3)


def probe(url: str, token: str, timeout: float) -> dict:
    health = wait_healthy(url, timeout)
    result = {"healthz": health, "healthy_at": time.time()}
    if not health:
        return result
    body, image = gradient_png()
    headers = {"Content-Type": "image/png"}
    result["no_token_status"] = requests.post(
        f"{url}/process?op=grayscale", data=body, headers=headers, timeout=30
    ).status_code
    reply = requests.post(
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
    args = argv if argv is not None else sys.argv[1:]
    timeout = float(args[2]) if len(args) > 2 else 60.0
    print(json.dumps(probe(args[0], args[1], timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
