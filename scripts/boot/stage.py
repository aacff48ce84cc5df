"""One boot on its own stage: private network, CA, S3/SSM/IMDS stand-ins, registry proxy, container.

with Stage(image, bucket=..., region=..., objects=..., parameters=...) as stage:
    box = stage.boot("worker-python", 0, user_data)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.boot import ssm
from scripts.boot.machine import Container, PrivateNet, stop_group
from scripts.boot.netplan import GATEWAY, aws_hosts
from scripts.boot.tls import make_ca_and_cert

ROOT = Path(__file__).resolve().parents[2]


class Stage(contextlib.ExitStack):
    def __init__(
        self,
        image: Path,
        *,
        bucket: str,
        region: str,
        objects: dict[str, bytes],
        parameters: dict[str, tuple[str, str]] | None = None,
        deny_registries: tuple[str, ...] = (),
        registry_budget: dict[str, int] | None = None,
        deny_s3: bool = False,
    ) -> None:
        super().__init__()
        self.registry_budget = registry_budget or {}
        self.image, self.bucket, self.region, self.objects = image, bucket, region, objects
        self.parameters = parameters or {}  # SSM name: (type, value)
        self.setup_port = 0
        self.deny_registries, self.deny_s3 = deny_registries, deny_s3
        self.workdir = Path(tempfile.mkdtemp(prefix="hdtp-boot-"))
        self.net: PrivateNet | None = None

    def __enter__(self) -> Stage:
        super().__enter__()
        self.callback(subprocess.run, ["rm", "-rf", str(self.workdir)], check=False)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start(self) -> None:
        self.tls = make_ca_and_cert(self.workdir, aws_hosts(self.bucket, self.region), GATEWAY)
        socket_path = str(self.workdir / "proxy.sock")
        proxy = subprocess.Popen(
            self._python(
                "scripts.boot.proxy",
                socket_path,
                *[f"--deny={h}" for h in self.deny_registries],
                *[f"--budget={h}={n}" for h, n in self.registry_budget.items()],
            ),
            cwd=ROOT,
            start_new_session=True,
        )
        self.callback(stop_group, proxy, 5)
        self.net = self.enter_context(PrivateNet())
        args = [
            "--cert",
            str(self.tls["cert"]),
            "--key",
            str(self.tls["key"]),
            "--proxy-socket",
            socket_path,
            "--bucket",
            self.bucket,
            "--region",
            self.region,
        ]
        for index, (key, data) in enumerate(self.objects.items()):
            path = self.workdir / f"object-{index}"
            path.write_bytes(data)
            args.append(f"--object={key}={path}")
        if self.parameters:
            args.append(f"--parameters={ssm.write_parameters(self.workdir / 'parameters.json', self.parameters)}")
        if self.deny_s3:
            args.append("--deny-s3")
        standins = self.net.popen(
            self._python("scripts.boot.standins", *args), cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        ready, _, port = standins.stdout.readline().strip().partition(" ")
        if ready != "ready":
            raise RuntimeError("the S3/SSM/IMDS stand-ins did not start")
        self.setup_port = int(port)

    def boot(self, name: str, index: int, user_data: str, public_keys: tuple[str, ...] = ()) -> Container:
        box = Container(self.net, self.image, self.workdir, name, index)
        self.callback(box.stop)
        # The test's CA (S3 stand-in) and any CA this machine's own egress re-signs TLS with.
        host_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        box.prepare(user_data, aws_hosts(self.bucket, self.region), [self.tls["ca"], *host_cas], public_keys)
        box.start()
        return box

    def in_net(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command in the private namespace (where the containers' addresses are); `env`
        replaces this process's environment."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.net.name}", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def put_parameters(self, parameters: dict[str, tuple[str, str]]) -> None:
        """Change parameters in the running SSM stand-in (the file is removed once read)."""
        path = ssm.write_parameters(self.workdir / "put-parameters.json", parameters)
        url = f"http://127.0.0.1:{self.setup_port}"
        done = self.in_net(self._python("scripts.boot.ssm", url, self.region, str(path)), timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"put_parameters: {done.stderr.strip()[-500:]}")

    def proxy_log(self) -> str:
        path = self.workdir / "proxy.sock.log"
        return path.read_text() if path.exists() else ""
