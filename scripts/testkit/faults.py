"""Fault drivers: each runs a real job with one fault injected and judges the outcome.

tests/reliability/test_faults.py asserts on them; scripts/soak.py runs them and tabulates the outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.testkit import cli, netns
from scripts.testkit.faultproxy import FaultProxy
from scripts.testkit.images import expected_pixels, max_pixel_diff, png_bytes, sample_rgb
from scripts.testkit.procs import ROOT, worker_command
from stripes.roles import ROLE_SPECS

OP = ROLE_SPECS["worker-python"].primary_op  # grayscale: strips go to worker-python first
STRIPS = 4
FAST_TIMEOUTS = {
    "COORDINATOR_READ_TIMEOUT": "2",
    "COORDINATOR_CONNECT_TIMEOUT": "1",
    "COORDINATOR_HEALTH_TIMEOUT": "1",
    "COORDINATOR_MAX_ATTEMPTS": "4",
}


@dataclass
class FaultOutcome:
    fault: str
    outcome: str  # "completed via failover" | "failed cleanly: ..." | "WRONG: ..."
    ok: bool
    seconds: float


def make_config(urls: list[str], environ: dict | None = None):
    from coordinator.config import load_config

    return load_config(workers=",".join(urls), environ={**FAST_TIMEOUTS, **(environ or {})})


def run_and_check(urls: list[str], image, on_start=None, environ: dict | None = None, plan: str = OP):
    """Run a job; returns (JobResult or None, error text or None, max pixel diff or None,
    [the event on which on_start injected its fault])."""
    from coordinator.engine import run_job
    from coordinator.errors import CoordinatorError

    fired = []

    def on_event(event):
        if on_start and event.kind == "start" and not fired and on_start(event):
            fired.append(event)

    try:
        result = run_job(png_bytes(image), make_config(urls, environ), plan=plan, strips=STRIPS, on_event=on_event)
    except CoordinatorError as exc:
        return None, str(exc), None, fired
    except Exception as exc:  # not a CoordinatorError: a bug, reported as such
        return None, f"UNEXPECTED {type(exc).__name__}: {exc}", None, fired
    return result, None, max_pixel_diff(result.image, expected_pixels(image, plan)), fired


def retried(result) -> bool:
    return any(strip.attempts > 1 or strip.failovers for strip in result.strips)


def kill_group(worker, signum: int) -> bool:
    """Signal the worker's whole process group: a pre-fork server's children too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signum)
    return True


# -- faults, as functions so scripts/soak.py can run them and tabulate the outcome -------------


def fault_kill_mid_strip(python, nodejs) -> FaultOutcome:
    """kill -9 the worker while its strip is on the wire (a throttled link keeps it there)."""
    image = sample_rgb(256, 160, seed=3)
    with FaultProxy(python.url, mode="throttle", rate=40_000) as proxy:
        started = time.monotonic()
        result, error, diff, fired = run_and_check(
            [proxy.url, nodejs.url],
            image,
            on_start=lambda event: event.worker_url == proxy.url and kill_group(python, signal.SIGKILL),
        )
    return judge("kill -9 mid-strip", result, error, diff, fired, started)


def fault_sigstop_mid_strip(python, nodejs) -> FaultOutcome:
    """SIGSTOP: the socket stays open and says nothing; the read timeout must end the wait."""
    image = sample_rgb(256, 160, seed=4)
    with FaultProxy(python.url, mode="throttle", rate=40_000) as proxy:
        started = time.monotonic()
        try:
            result, error, diff, fired = run_and_check(
                [proxy.url, nodejs.url],
                image,
                on_start=lambda event: event.worker_url == proxy.url and kill_group(python, signal.SIGSTOP),
            )
        finally:
            kill_group(python, signal.SIGCONT)
    return judge("SIGSTOP mid-strip", result, error, diff, fired, started)


def fault_stopped_before(python, nodejs) -> FaultOutcome:
    """A frozen worker: /healthz times out, so discovery must route around it."""
    image = sample_rgb(120, 90, seed=6)
    kill_group(python, signal.SIGSTOP)
    started = time.monotonic()
    try:
        result, error, diff, _ = run_and_check([python.url, nodejs.url], image)
    finally:
        kill_group(python, signal.SIGCONT)
    used_python = result is not None and any(s.worker_url == python.url for s in result.strips)
    if used_python:
        return FaultOutcome("SIGSTOP before the job", "WRONG: a frozen worker was given strips", False, 0)
    return judge("SIGSTOP before the job", result, error, diff, [True], started)


def fault_proxy_mode(python, nodejs, mode: str, label: str, **proxy_args) -> FaultOutcome:
    image = sample_rgb(120, 90, seed=5)
    with FaultProxy(python.url, mode=mode, **proxy_args) as proxy:
        started = time.monotonic()
        result, error, diff, _ = run_and_check([proxy.url, nodejs.url], image)
        fired = [proxy.faulted] if proxy.faulted or mode == "throttle" else []
    return judge(label, result, error, diff, fired, started)


def fault_drip(python, nodejs, bound_s: float = 12) -> FaultOutcome:
    """A reply that trickles in a byte every 0.5 s: each read succeeds, so only a deadline on
    the whole strip can end it. The job must finish (failover) or fail within bound_s."""
    image = sample_rgb(120, 90, seed=7)
    box = {}
    with FaultProxy(python.url, mode="drip", delay=0.5) as proxy:
        started = time.monotonic()
        worker = threading.Thread(
            target=lambda: box.update(out=run_and_check([proxy.url, nodejs.url], image)), daemon=True
        )
        worker.start()
        worker.join(bound_s)
        hung = worker.is_alive()
        seconds = time.monotonic() - started
    # Stopping the proxy closed the trickle, so the job thread ends now either way.
    worker.join(30)
    if hung:
        return FaultOutcome(
            "slow-drip reply",
            f"WRONG: still running after {bound_s:.0f}s "
            f"(read timeout {FAST_TIMEOUTS['COORDINATOR_READ_TIMEOUT']}s never fires)",
            False,
            seconds,
        )
    result, error, diff, _ = box.get("out", (None, "no result", None, None))
    return judge("slow-drip reply", result, error, diff, [True], started)


def judge(fault: str, result, error, diff, fired, started) -> FaultOutcome:
    seconds = time.monotonic() - started
    if not fired:
        return FaultOutcome(fault, "fault never fired (no strip reached the faulty worker)", False, seconds)
    if error is not None:
        clean = "\n" not in error and not error.startswith("UNEXPECTED")
        return FaultOutcome(
            fault, f"failed cleanly: {error}" if clean else f"WRONG: messy error {error!r}", False, seconds
        )
    if diff is None or diff > 1:
        return FaultOutcome(fault, f"WRONG: completed with wrong pixels (max diff {diff})", False, seconds)
    return FaultOutcome(fault, "completed via failover" if retried(result) else "completed", True, seconds)


ALL_FAULTS = {
    "kill -9 mid-strip": fault_kill_mid_strip,
    "SIGSTOP mid-strip": fault_sigstop_mid_strip,
    "close mid-response": lambda p, n: fault_proxy_mode(p, n, "close_mid_response", "close mid-response"),
    "garbage image": lambda p, n: fault_proxy_mode(p, n, "garbage", "garbage image"),
    "HTTP 500": lambda p, n: fault_proxy_mode(p, n, "server_error", "HTTP 500"),
    "decompression-bomb reply": lambda p, n: fault_proxy_mode(p, n, "bomb", "decompression-bomb reply"),
    "slow-drip reply": fault_drip,
    "wrong-size image": lambda p, n: fault_proxy_mode(p, n, "wrong_size", "wrong-size image"),
    "one-column image": lambda p, n: fault_proxy_mode(p, n, "one_column", "one-column image"),
    "one column short": lambda p, n: fault_proxy_mode(p, n, "narrow", "one column short"),
    "slow link (8 KB/s + 0.3 s)": lambda p, n: fault_proxy_mode(
        p, n, "throttle", "slow link (8 KB/s + 0.3 s)", rate=8_000, delay=0.3
    ),
    "SIGSTOP before the job": lambda p, n: fault_stopped_before(p, n),
}


# Known bugs, kept visible; strict, so a fix turns these red until the entry is removed.
FAULT_BUGS: dict[str, str] = {
    # Fixed: "slow-drip reply" (every exchange has a deadline and a size cap, transport.py) and
    # "decompression-bomb reply" (imaging.decode_any checks the declared size first).
    # Fixed in a5d352e (coordinator checks the reply's width): "one-column image" was stitched
    # by numpy broadcasting (wrong pixels, 200), "one column short" raised a ValueError.
}


def run_cli(args: list[str], environ: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI with the fast fault timeouts, and no worker list but the one in `args`."""
    return cli.run_cli(*args, env={**FAST_TIMEOUTS, **environ}, timeout=timeout)


def process_args(source: Path, out: Path, urls: list[str], strips: int = STRIPS) -> list[str]:
    """`process` of one file with the faults' plan, over exactly these workers."""
    return ["process", str(source), "-o", str(out), "--plan", OP, "--strips", str(strips), "--workers", ",".join(urls)]


def cli_through_faults(
    urls: list[str], mode: str, folder: Path
) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    """The CLI on a small image with every worker behind a FaultProxy in `mode`: its result, its
    seconds, and the files it left in `folder` besides its input (a failed job must leave none)."""
    source = folder / "in.png"
    source.write_bytes(png_bytes(sample_rgb(64, 48)))
    with contextlib.ExitStack() as stack:
        proxies = [stack.enter_context(FaultProxy(url, mode=mode)) for url in urls]
        started = time.monotonic()
        args = process_args(source, folder / "out.png", [proxy.url for proxy in proxies])
        done = run_cli(args, {"COORDINATOR_READ_TIMEOUT": "1.5"})
        seconds = time.monotonic() - started
    return done, seconds, sorted(path.name for path in folder.iterdir() if path != source)


# -- a slow link made by the kernel: tc tbf on the loopback of a throwaway namespace ------------

WAIT_HEALTHY = """
import sys, time, urllib.request
deadline = time.monotonic() + 40
for url in sys.argv[1:]:
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{url} not healthy")
            time.sleep(0.2)
"""


def tbf_slow_link(tmp_path: Path) -> tuple[bool, str]:
    """Workers and the CLI inside a namespace whose loopback tbf limits: at 4 Mbit/s the job
    completes with the right pixels; at 32 kbit/s with a 1 s timeout it fails with one clear
    line, exit 3, and no output file. Returns (passed, what happened); also run by soak."""
    from PIL import Image

    image = sample_rgb(160, 96, seed=8)
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png_bytes(image))
    with netns.SlowLoopback(rate="4mbit") as ns:
        urls = []
        for spec in ROLE_SPECS.values():
            runtime, port = spec.runtime, spec.port
            command, cwd = worker_command(runtime)
            env = {**os.environ, "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(port)}
            env.pop("WORKER_TOKEN", None)
            with open(tmp_path / f"{runtime}.log", "wb") as log:  # the child keeps its own copy
                ns.popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            urls.append(f"http://127.0.0.1:{port}")
        ready = ns.run([sys.executable, "-c", WAIT_HEALTHY, *urls], capture_output=True, text=True, timeout=60)
        if ready.returncode != 0:
            return False, f"workers in the namespace did not start: {ready.stderr.strip()}"
        args = process_args(source, out, urls)
        env = {**os.environ, **FAST_TIMEOUTS, "COORDINATOR_READ_TIMEOUT": "10"}
        started = time.monotonic()
        done = ns.run(
            [sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        slow_seconds = time.monotonic() - started
        if done.returncode != 0:
            return False, f"at {ns.rate}: exit {done.returncode}: {done.stderr.strip()[-200:]}"
        diff = max_pixel_diff(Image.open(out), expected_pixels(image, OP))
        if diff > 1:
            return False, f"at {ns.rate}: wrong pixels (max diff {diff})"
        out.unlink()

        # Now a link too slow for the configured timeout: one clear error, no output file.
        ns.set_rate("32kbit")
        env.update(
            {"COORDINATOR_READ_TIMEOUT": "1", "COORDINATOR_MAX_ATTEMPTS": "2", "COORDINATOR_HEALTH_TIMEOUT": "3"}
        )
        started = time.monotonic()
        done = ns.run(
            [sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        seconds = time.monotonic() - started
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]
    message = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode != 3 or "timed out" not in done.stderr or "Traceback" in done.stderr:
        return False, f"at 32kbit: exit {done.returncode}: {message[:200]}"
    if leftovers:
        return False, f"at 32kbit: files left behind: {leftovers}"
    if seconds > 60:
        return False, f"at 32kbit: a 1 s timeout x 2 attempts took {seconds:.0f}s to give up"
    return True, (
        f"4mbit: right pixels in {slow_seconds:.1f}s; 32kbit + 1 s timeout: exit 3 in "
        f"{seconds:.1f}s, no file ({message[:60]})"
    )
