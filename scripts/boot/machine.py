"""The private network (a namespace with one bridge, no route out) and the containers booted on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from scripts.boot.netplan import GATEWAY, IMDS, machine_address

BRIDGE = "br0"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group (started with start_new_session), SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class PrivateNet:
    """`ip netns` namespace holding the bridge, the stand-ins and the containers' host-side links.

    It has no interface but its own loopback and bridge, and no default route: nothing booted
    on it can reach the host's interfaces or the outside, except the proxy through its relay."""

    def __init__(self) -> None:
        self.name = f"hdtpboot-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> PrivateNet:
        run(["ip", "netns", "add", self.name])
        try:
            for args in (
                ["link", "set", "lo", "up"],
                ["link", "add", BRIDGE, "type", "bridge"],
                ["addr", "add", f"{GATEWAY}/24", "dev", BRIDGE],
                ["addr", "add", f"{IMDS}/32", "dev", BRIDGE],
                ["link", "set", BRIDGE, "up"],
            ):
                run(["ip", "-n", self.name, *args])
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        # nsenter switches the network namespace only; `ip netns exec` would also remount /sys,
        # hiding the cgroup hierarchies systemd-nspawn needs.
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.name}", *argv], start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            stop_group(proc, grace=30)
        run(["ip", "netns", "del", self.name], check=False)

    def routes(self) -> str:
        return run(["ip", "-n", self.name, "route", "show", "table", "all"]).stdout


class Container:
    """One systemd-nspawn machine booted from a private copy of the image, with a NoCloud seed."""

    def __init__(self, net: PrivateNet, image: Path, workdir: Path, name: str, index: int) -> None:
        self.net, self.image, self.name, self.index = net, image, name, index
        self.root = workdir / name
        self.address = machine_address(index)
        self.console = workdir / f"{name}.console.log"
        self.proc: subprocess.Popen | None = None

    def prepare(
        self, user_data: str, hosts: list[str], ca_certs: list[Path], public_keys: tuple[str, ...] = ()
    ) -> None:
        """`public_keys`: the instance's key pair, in the meta-data (as EC2's IMDS serves it),
        which cloud-init writes to the default user's authorized_keys."""
        run(["cp", "-a", "--reflink=auto", str(self.image), str(self.root)], timeout=600)
        seed = self.root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "user-data").write_text(user_data)
        keys = "".join(f"  - {key.strip()}\n" for key in public_keys)
        meta = f"instance-id: i-{self.name}\nlocal-hostname: {self.name}\n" + (f"public-keys:\n{keys}" if keys else "")
        (seed / "meta-data").write_text(meta)
        (self.root / "etc/systemd/network/10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={self.address}/24\nLinkLocalAddressing=no\n"
            f"IPv6AcceptRA=no\n\n[Route]\nDestination={IMDS}/32\nScope=link\n"
        )
        with open(self.root / "etc/hosts", "a") as out:
            out.writelines(f"{GATEWAY} {host}\n" for host in hosts)
        for index, cert in enumerate(ca_certs):
            shutil.copy(cert, self.root / f"usr/local/share/ca-certificates/boot-test-{index}.crt")
        run(["chroot", str(self.root), "update-ca-certificates"], timeout=120)

    def start(self) -> None:
        # --timezone=off: nspawn would bind-mount the host's /etc/localtime, and tzdata's postinst
        # (pulled in by python3-boto3) fails to replace a mount point.
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            "-D",
            str(self.root),
            f"--machine={self.name}",
            f"--network-bridge={BRIDGE}",
            "--console=pipe",
            "--timezone=off",
        ]
        with open(self.console, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = self.net.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def leader(self, timeout: float = 60) -> int:
        """The container's PID 1 as seen from the host (the child of systemd-nspawn)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited {self.proc.returncode}: {self.console.read_text(errors='replace')[-1500:]}"
                )
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.2)
        raise RuntimeError("container did not start")

    def sh(self, script: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Run a shell script inside the container (all its namespaces, its root)."""
        argv = [
            "nsenter",
            "-t",
            str(self.leader()),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-r",
            "-w",
            "env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "HOME=/root",
            "sh",
            "-c",
            script,
        ]
        return run(argv, timeout=timeout, check=check)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=20)  # nspawn turns SIGTERM into a clean poweroff
        shutil.rmtree(self.root, ignore_errors=True)
