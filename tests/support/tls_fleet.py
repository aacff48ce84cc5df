"""A loopback fleet as infra builds one (issue 16): workers serving TLS with a certificate from the
fleet CA for FLEET_TLS_NAME, a WORKER_TOKEN_FILE they re-read, and an outputs file holding the
https URLs, worker_token, worker_ca_pem and worker_tls_name; plus a token rotation done the way
`fleet rotate-token` leaves things (outputs file rewritten atomically, then the workers' file).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from pathlib import Path

from PIL import Image

from scripts.testkit.procs import TlsClient, json_lines
from scripts.testkit.tls import FLEET_TLS_NAME, Authority


class TlsFleet:
    """Start workers with `start(runtime, authority=None)`; `outputs` lists every started one."""

    def __init__(self, worker_factory, folder: Path, token: str = "first-fleet-token-0123456789"):
        self.folder, self.worker_factory = folder, worker_factory
        self.ca = Authority("fleet CA")
        self.ca_file = self.ca.write_ca(folder)
        self.token_file = folder / "worker-token"
        self.token_file.write_text(f"{token}\n")
        self.outputs = folder / "outputs.json"
        self.workers: list = []
        self._write_outputs(token)

    def start(self, runtime: str, authority: Authority | None = None):
        """A TLS worker taking the fleet token; `authority`: sign its certificate with another CA."""
        signer = authority or self.ca
        stem = f"server-{len(self.workers)}"
        cert, key = signer.issue().write(self.folder, stem)
        env = {"WORKER_TLS_CERT": str(cert), "WORKER_TLS_KEY": str(key), "WORKER_TOKEN_FILE": str(self.token_file)}
        worker = self.worker_factory(runtime, env, tls=TlsClient(signer.write_ca(self.folder, f"{stem}-ca")))
        self.workers.append(worker)
        self._write_outputs(self.token())
        return worker

    def token(self) -> str:
        return json.loads(self.outputs.read_text())["worker_token"]

    def _write_outputs(self, token: str) -> None:
        """Atomically (temp file + rename), as `fleet rotate-token` rewrites it."""
        data = {
            "workers": [{"url": worker.url} for worker in self.workers],
            "worker_token": token,
            "worker_ca_pem": self.ca.cert_pem.decode(),
            "worker_tls_name": FLEET_TLS_NAME,
        }
        staged = self.outputs.with_suffix(".next")
        staged.write_text(json.dumps(data))
        os.replace(staged, self.outputs)

    def rotate(self, healthy: list) -> str:
        """A new token in the outputs file, then in the workers' file; returns it once every
        worker in `healthy` refuses the old one (they re-read the file within ~1 s)."""
        old, new = self.token(), f"rotated-{secrets.token_hex(12)}"
        self._write_outputs(new)
        self.token_file.write_text(f"{new}\n")
        for worker in healthy:
            wait_refused(worker, old)
        return new


def wait_refused(worker, token: str, timeout: float = 15) -> None:
    """Until the worker answers 401 to `token`."""
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    deadline = time.monotonic() + timeout
    with worker.session() as session:
        while time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
            reply = session.post(f"{worker.url}/process?op=invert", data=buffer.getvalue(), headers=headers, timeout=5)
            if reply.status_code == 401:
                return
            time.sleep(0.2)
    raise AssertionError(f"{worker.url} still takes the old token")


def process_statuses(worker, since: int = 0) -> list[int]:
    """The HTTP status of each POST /process in the worker's JSON log after character `since`."""
    entries = json_lines(worker.log_text()[since:].splitlines())
    return [e.get("status") for e in entries if e.get("msg") == "request" and e.get("path") == "/process"]
