"""A throwaway network namespace whose loopback is rate-limited by tc tbf (this kernel has no
netem). Everything inside talks over 127.0.0.1 of the namespace, so no traffic leaves the host.

    with SlowLoopback(rate="256kbit") as ns:
        ns.popen(["node", "server.js"], ...)        # runs inside the namespace
        ns.run([sys.executable, "-m", "coordinator", ...])

Needs root (CAP_NET_ADMIN) and iproute2's `ip` and `tc`; `available()` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid


def missing_tools() -> str | None:
    """The reason iproute2 cannot be used, or None (a package .ci/run installs)."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"iproute2's `{tool}` is not installed"
    return None


def available() -> str | None:
    """None when namespaces can be made here, else the reason."""
    missing = missing_tools()
    if missing:
        return missing
    if os.geteuid() != 0:
        return "creating a network namespace needs root (CAP_NET_ADMIN)"
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class SlowLoopback:
    def __init__(self, rate: str = "1mbit", burst: str = "16kb", latency: str = "200ms"):
        self.name = f"rel-{uuid.uuid4().hex[:10]}"
        self.rate, self.burst, self.latency = rate, burst, latency
        self.processes: list[subprocess.Popen] = []

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def __enter__(self) -> SlowLoopback:
        self._ip("netns", "add", self.name)
        try:
            self._ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
            self._tbf("add", self.rate)
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.processes:  # started with start_new_session: kill the group
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.prefix() + command, start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def _tbf(self, action: str, rate: str) -> None:
        """`tc qdisc add|change` of the token bucket filter on the namespace's loopback."""
        tbf = ["tbf", "rate", rate, "burst", self.burst, "latency", self.latency]
        self._ip("netns", "exec", self.name, "tc", "qdisc", action, "dev", "lo", "root", *tbf)

    def set_rate(self, rate: str) -> None:
        self._tbf("change", rate)
        self.rate = rate

    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix() + command, **kwargs)
