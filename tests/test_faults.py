"""Faults under a real job: each ends in the right pixels through failover, or in one clear
error within the configured timeout, and never in a partial output file.

The fleet is two real workers (python, nodejs). A fault sits in front of, or inside, the
worker that the op is routed to first (grayscale -> python), so failover is what saves the job.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.procs import ROOT
from tests.test_load import expected_pixels, max_pixel_diff, png_bytes, sample_rgb

OP = "grayscale"                 # primary of worker-python, so strips go there first
STRIPS = 4
FAST_TIMEOUTS = {"COORDINATOR_READ_TIMEOUT": "2", "COORDINATOR_CONNECT_TIMEOUT": "1",
                 "COORDINATOR_HEALTH_TIMEOUT": "1", "COORDINATOR_MAX_ATTEMPTS": "4"}


@dataclass
class FaultOutcome:
    fault: str
    outcome: str                 # "completed via failover" | "failed cleanly: ..." | "WRONG: ..."
    ok: bool
    seconds: float


def make_config(urls: list[str], environ: dict | None = None):
    from coordinator.config import load_config

    return load_config(workers=",".join(urls), environ={**FAST_TIMEOUTS, **(environ or {})})


def run_and_check(urls: list[str], image, on_start=None, environ: dict | None = None,
                  plan: str = OP):
    """Run a job; returns (JobResult or None, error text or None, max pixel diff or None,
    [the event on which on_start injected its fault])."""
    from coordinator.engine import run_job
    from coordinator.errors import CoordinatorError

    fired = []

    def on_event(event):
        if on_start and event.kind == "start" and not fired and on_start(event):
            fired.append(event)

    try:
        result = run_job(png_bytes(image), make_config(urls, environ), plan=plan, strips=STRIPS,
                         on_event=on_event)
    except CoordinatorError as exc:
        return None, str(exc), None, fired
    except Exception as exc:       # not a CoordinatorError: a bug, reported as such
        return None, f"UNEXPECTED {type(exc).__name__}: {exc}", None, fired
    return result, None, max_pixel_diff(result.image, expected_pixels(image, plan)), fired


def retried(result) -> bool:
    return any(strip.attempts > 1 or strip.failovers for strip in result.strips)


@pytest.fixture(scope="module")
def shared_fleet(worker_factory):
    return {"python": worker_factory("python"), "nodejs": worker_factory("nodejs")}


@pytest.fixture
def fleet(shared_fleet, worker_factory):
    """A python + nodejs pair; a worker that a test killed is replaced before the next test."""
    for runtime, worker in shared_fleet.items():
        kill_group(worker, signal.SIGCONT)
        if worker.proc.poll() is not None:
            shared_fleet[runtime] = worker_factory(runtime)
    yield shared_fleet["python"], shared_fleet["nodejs"]
    for worker in shared_fleet.values():
        kill_group(worker, signal.SIGCONT)


def kill_group(worker, signum: int) -> bool:
    """Signal the worker's whole process group: a pre-fork server's children too."""
    try:
        os.killpg(worker.pid, signum)
    except ProcessLookupError:
        pass
    return True


# -- faults, as functions so scripts/soak.py can run them and tabulate the outcome -------------

def fault_kill_mid_strip(python, nodejs) -> FaultOutcome:
    """kill -9 the worker while its strip is on the wire (a throttled link keeps it there)."""
    image = sample_rgb(256, 160, seed=3)
    with FaultProxy(python.url, mode="throttle", rate=40_000) as proxy:
        started = time.monotonic()
        result, error, diff, fired = run_and_check(
            [proxy.url, nodejs.url], image,
            on_start=lambda event: event.worker_url == proxy.url and kill_group(python, signal.SIGKILL))
    return judge("kill -9 mid-strip", result, error, diff, fired, started)


def fault_sigstop_mid_strip(python, nodejs) -> FaultOutcome:
    """SIGSTOP: the socket stays open and says nothing; the read timeout must end the wait."""
    image = sample_rgb(256, 160, seed=4)
    with FaultProxy(python.url, mode="throttle", rate=40_000) as proxy:
        started = time.monotonic()
        try:
            result, error, diff, fired = run_and_check(
                [proxy.url, nodejs.url], image,
                on_start=lambda event: event.worker_url == proxy.url and kill_group(python, signal.SIGSTOP))
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
        worker = threading.Thread(target=lambda: box.update(out=run_and_check([proxy.url, nodejs.url], image)),
                                  daemon=True)
        worker.start()
        worker.join(bound_s)
        hung = worker.is_alive()
        seconds = time.monotonic() - started
    # Stopping the proxy closed the trickle, so the job thread ends now either way.
    worker.join(30)
    if hung:
        return FaultOutcome("slow-drip reply", f"WRONG: still running after {bound_s:.0f}s "
                            f"(read timeout {FAST_TIMEOUTS['COORDINATOR_READ_TIMEOUT']}s never fires)",
                            False, seconds)
    result, error, diff, _ = box.get("out", (None, "no result", None, None))
    return judge("slow-drip reply", result, error, diff, [True], started)


def judge(fault: str, result, error, diff, fired, started) -> FaultOutcome:
    seconds = time.monotonic() - started
    if not fired:
        return FaultOutcome(fault, "fault never fired (no strip reached the faulty worker)", False, seconds)
    if error is not None:
        clean = "\n" not in error and not error.startswith("UNEXPECTED")
        return FaultOutcome(fault, f"failed cleanly: {error}" if clean else f"WRONG: messy error {error!r}",
                            False, seconds)
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
    "slow link (8 KB/s + 0.3 s)": lambda p, n: fault_proxy_mode(p, n, "throttle", "slow link (8 KB/s + 0.3 s)",
                                                               rate=8_000, delay=0.3),
    "SIGSTOP before the job": lambda p, n: fault_stopped_before(p, n),
}


# Known bugs, kept visible; strict, so a fix turns these red until the entry is removed.
FAULT_BUGS: dict[str, str] = {
    # Fixed: "slow-drip reply" (every exchange has a deadline and a size cap, transport.py) and
    # "decompression-bomb reply" (imaging.decode_any checks the declared size first).
    # Fixed in a5d352e (coordinator checks the reply's width): "one-column image" was stitched
    # by numpy broadcasting (wrong pixels, 200), "one column short" raised a ValueError.
}


@pytest.mark.parametrize("fault", [
    pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=FAULT_BUGS[name])] if name in FAULT_BUGS else [])
    for name in ALL_FAULTS])
def test_fault_ends_in_right_pixels_through_failover(fault, fleet):
    outcome = ALL_FAULTS[fault](*fleet)
    assert outcome.ok, f"{fault}: {outcome.outcome}"
    assert outcome.outcome.startswith("completed")


def test_failover_really_moved_the_strip_after_a_kill(fleet):
    """Not just 'it completed': the strip that was on the dead worker was redone elsewhere."""
    python, nodejs = fleet
    image = sample_rgb(256, 160, seed=3)
    with FaultProxy(python.url, mode="throttle", rate=40_000) as proxy:
        result, error, diff, fired = run_and_check(
            [proxy.url, nodejs.url], image,
            on_start=lambda event: event.worker_url == proxy.url and kill_group(python, signal.SIGKILL))
    assert fired and error is None and diff <= 1, error
    assert retried(result), "no strip was retried, yet its worker was killed mid-strip"
    assert all(strip.worker_url == nodejs.url for strip in result.strips if strip.failovers)


def test_fault_proxy_modes_do_what_they_say(fleet):
    """The injector itself: each mode really breaks what it claims to, and only /process."""
    import requests
    from PIL import Image

    python, _ = fleet
    body = png_bytes(sample_rgb(30, 20))
    headers = {"Content-Type": "image/png"}

    def process(proxy):
        return requests.post(f"{proxy.url}/process?format=png", data=body, headers=headers, timeout=5)

    with FaultProxy(python.url, mode="pass") as proxy:
        assert Image.open(io.BytesIO(process(proxy).content)).size == (30, 20)
        for mode, size in (("wrong_size", (29, 19)), ("one_column", (1, 20)), ("narrow", (29, 20))):
            proxy.mode = mode
            assert Image.open(io.BytesIO(process(proxy).content)).size == size, mode
        proxy.mode = "garbage"
        response = process(proxy)
        assert response.status_code == 200 and not response.content.startswith(b"\x89PNG")
        proxy.mode = "server_error"
        assert process(proxy).status_code == 500
        proxy.mode = "close_mid_response"
        with pytest.raises(requests.RequestException):
            process(proxy)
        assert requests.get(f"{proxy.url}/healthz", timeout=5).status_code == 200
        proxy.mode = "blackhole"
        with pytest.raises(requests.Timeout):
            requests.post(f"{proxy.url}/process", data=body, headers=headers, timeout=0.5)
        assert proxy.faulted == 7
    with pytest.raises(ValueError):
        FaultProxy(python.url, mode="nonsense")


# -- no worker can do it: one clear error, in time, and no output file -------------------------

def run_cli(args: list[str], environ: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAST_TIMEOUTS, **environ}
    env.pop("COORDINATOR_WORKERS", None)
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mode", ["garbage", "close_mid_response", "blackhole"])
def test_cli_fails_clearly_and_writes_no_partial_output(mode, fleet, tmp_path):
    python, nodejs = fleet
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(sample_rgb(64, 48)))
    out = tmp_path / "out.png"
    with FaultProxy(python.url, mode=mode) as bad_python, FaultProxy(nodejs.url, mode=mode) as bad_node:
        started = time.monotonic()
        done = run_cli(["process", str(source), "-o", str(out), "--plan", OP, "--strips", str(STRIPS),
                        "--workers", f"{bad_python.url},{bad_node.url}"],
                       {"COORDINATOR_READ_TIMEOUT": "1.5"})
        seconds = time.monotonic() - started
    assert done.returncode == 3, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert not out.exists(), "a failed job left an output file behind"
    leftovers = [path.name for path in tmp_path.iterdir() if path.name != "in.png"]
    assert not leftovers, f"files left behind by a failed job: {leftovers}"
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert any("strip" in line or "worker" in line for line in errors), done.stderr
    # The bound is the configured one: attempts x read timeout, plus start-up; not a speed test.
    assert seconds < 4 * 1.5 + 30, f"took {seconds:.0f}s"


def test_cli_success_writes_the_right_pixels(fleet, tmp_path):
    """The control for the test above: the same command with healthy workers works."""
    python, nodejs = fleet
    image = sample_rgb(64, 48)
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(image))
    out = tmp_path / "out.png"
    done = run_cli(["process", str(source), "-o", str(out), "--plan", OP, "--strips", str(STRIPS),
                    "--workers", f"{python.url},{nodejs.url}"], {})
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert max_pixel_diff(Image.open(out), expected_pixels(image, OP)) <= 1


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

    from tests.support import netns
    from tests.support.procs import worker_command

    image = sample_rgb(160, 96, seed=8)
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png_bytes(image))
    with netns.SlowLoopback(rate="4mbit") as ns:
        urls = []
        for runtime, port in (("python", 5001), ("nodejs", 5002)):
            command, cwd = worker_command(runtime)
            env = {**os.environ, "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(port)}
            env.pop("WORKER_TOKEN", None)
            log = open(tmp_path / f"{runtime}.log", "wb")
            ns.popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            urls.append(f"http://127.0.0.1:{port}")
        ready = ns.run([sys.executable, "-c", WAIT_HEALTHY, *urls], capture_output=True, text=True,
                       timeout=60)
        if ready.returncode != 0:
            return False, f"workers in the namespace did not start: {ready.stderr.strip()}"
        args = ["process", str(source), "-o", str(out), "--plan", OP, "--strips", str(STRIPS),
                "--workers", ",".join(urls)]
        env = {**os.environ, **FAST_TIMEOUTS, "COORDINATOR_READ_TIMEOUT": "10"}
        started = time.monotonic()
        done = ns.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=120)
        slow_seconds = time.monotonic() - started
        if done.returncode != 0:
            return False, f"at {ns.rate}: exit {done.returncode}: {done.stderr.strip()[-200:]}"
        diff = max_pixel_diff(Image.open(out), expected_pixels(image, OP))
        if diff > 1:
            return False, f"at {ns.rate}: wrong pixels (max diff {diff})"
        out.unlink()

        # Now a link too slow for the configured timeout: one clear error, no output file.
        ns.set_rate("32kbit")
        env.update({"COORDINATOR_READ_TIMEOUT": "1", "COORDINATOR_MAX_ATTEMPTS": "2",
                    "COORDINATOR_HEALTH_TIMEOUT": "3"})
        started = time.monotonic()
        done = ns.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - started
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]
    message = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode != 3 or "timed out" not in done.stderr or "Traceback" in done.stderr:
        return False, f"at 32kbit: exit {done.returncode}: {message[:200]}"
    if leftovers:
        return False, f"at 32kbit: files left behind: {leftovers}"
    if seconds > 60:
        return False, f"at 32kbit: a 1 s timeout x 2 attempts took {seconds:.0f}s to give up"
    return True, (f"4mbit: right pixels in {slow_seconds:.1f}s; 32kbit + 1 s timeout: exit 3 in "
                  f"{seconds:.1f}s, no file ({message[:60]})")


def test_slow_link_via_tbf_completes_then_times_out_cleanly(tmp_path):
    from tests.conftest import skip_or_fail
    from tests.support import netns

    if netns.missing_tools():
        skip_or_fail(f"tbf slow link: {netns.missing_tools()}")    # a package: CI must have it
    reason = netns.available()
    if reason:
        # A missing privilege, which no package fixes; the throttling-proxy slow link above
        # still covers the behaviour.
        pytest.skip(f"tbf slow link: {reason}")
    passed, what = tbf_slow_link(tmp_path)
    assert passed, what


# -- a hostile worker (tests/support/hostile_worker.py): issue 11 items 9-12 -------------------

def hostile_job(bad, good_url: str, image=None, environ: dict | None = None):
    """A grayscale job on [bad, good]: the hostile worker says it is python with grayscale
    primary, so it gets the strips first and failover is what saves the job."""
    image = image or sample_rgb(96, 64, seed=11)
    started = time.monotonic()
    result, error, diff, _ = run_and_check([bad.url, good_url], image, environ=environ)
    return result, error, diff, time.monotonic() - started


@pytest.mark.parametrize("where", ["health", "process"])
def test_a_worker_that_drips_its_headers_fails_over_within_the_deadline(fleet, where):
    """11.9: `HTTP/1.1 200 OK` then a byte a second beats every per-read timeout; only a
    deadline on the whole exchange ends it (before the fix the job never ended)."""
    from tests.support.hostile_worker import HostileWorker

    _, nodejs = fleet
    modes = {"health": "drip_headers"} if where == "health" else {"process": "drip_headers"}
    with HostileWorker(delay=0.2, **modes) as bad:
        box = {}
        job = threading.Thread(target=lambda: box.update(out=hostile_job(bad, nodejs.url)), daemon=True)
        job.start()
        job.join(40)
        hung = job.is_alive()
    assert not hung, "the job still waits on a worker that drips its headers"
    result, error, diff, seconds = box["out"]
    assert error is None and diff <= 1, error
    assert {strip.worker_url for strip in result.strips} == {nodejs.url}
    if where == "process":
        reasons = [reason for strip in result.strips for reason in strip.failovers]
        assert reasons and all("timed out" in reason for reason in reasons), reasons
    # connect 1 + read 2 + transfer allowance, per attempt; generous for a loaded machine
    assert seconds < 30, f"took {seconds:.0f} s"


def test_a_redirect_is_a_failed_attempt_never_followed(fleet):
    """11.12: a 302 from /process is not followed (the strip would go to another host, without
    our token); it is a failed attempt with its reason, and the strip moves on."""
    from tests.support.hostile_worker import HostileWorker

    _, nodejs = fleet
    with HostileWorker(health="html") as elsewhere, \
            HostileWorker(process="redirect", location=f"{elsewhere.url}/process") as bad:
        result, error, diff, _ = hostile_job(bad, nodejs.url)
        assert bad.requests["/process"] >= 1
        assert elsewhere.requests == {"/healthz": 0, "/process": 0, "other": 0}, "the redirect was followed"
    assert error is None and diff <= 1, error
    reasons = [reason for strip in result.strips for reason in strip.failovers]
    assert any("redirected (HTTP 302" in reason and "not followed" in reason for reason in reasons), reasons


FAKE_GS = """#!/bin/sh
echo "gs ran with: $*" >> "{marker}"
exit 1
"""


def fake_ghostscript(tmp_path: Path) -> tuple[dict, Path]:
    """A `gs` first on PATH that leaves a marker file when anything runs it."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(FAKE_GS.format(marker=marker))
    (bin_dir / "gs").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}, marker


def test_an_eps_reply_never_runs_ghostscript(fleet, tmp_path):
    """11.10: a worker replying EPS (declaring the strip's exact size) is a bad reply; the
    decoder's format allow-list means Ghostscript is never started."""
    from tests.support.hostile_worker import HostileWorker

    _, nodejs = fleet
    env, marker = fake_ghostscript(tmp_path)
    image = sample_rgb(64, 48, seed=12)
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png_bytes(image))
    with HostileWorker(process="eps") as bad:
        done = run_cli(["process", str(source), "-o", str(out), "--plan", OP, "--strips", "2",
                        "--workers", f"{bad.url},{nodejs.url}"], env)
        assert bad.requests["/process"] >= 1
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), f"Ghostscript ran: {marker.read_text()}"
    assert "bad reply" in done.stderr  # the EPS strip was refused and redone on nodejs
    from PIL import Image

    assert max_pixel_diff(Image.open(out), expected_pixels(image, OP)) <= 1


def test_an_eps_input_named_png_never_runs_ghostscript(fleet, tmp_path):
    """11.10: an EPS file named holiday.png is not an image we accept: exit 2, no gs."""
    from tests.support.hostile_worker import EPS

    python, nodejs = fleet
    env, marker = fake_ghostscript(tmp_path)
    source = tmp_path / "holiday.png"
    source.write_bytes(EPS.format(w=64, h=48).encode())
    done = run_cli(["process", str(source), "-o", str(tmp_path / "out.png"),
                    "--workers", f"{python.url},{nodejs.url}"], env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "not an image" in done.stderr, done.stderr
    assert not marker.exists(), f"Ghostscript ran: {marker.read_text()}"


@pytest.mark.parametrize("inputs", [1, 2])
def test_ctrl_c_ends_the_cli_while_a_worker_drips(tmp_path, inputs):
    """11.9: Ctrl-C while strips wait on a dripping worker ends the CLI at once (exit 130),
    single input and batch; before, the strip threads kept the process alive."""
    from tests.support.hostile_worker import HostileWorker

    names = []
    for number in range(inputs):
        names.append(str(tmp_path / f"in{number}.png"))
        Path(names[-1]).write_bytes(png_bytes(sample_rgb(40, 30, seed=number)))
    out = str(tmp_path / "out.png") if inputs == 1 else f"{tmp_path / 'outdir'}{os.sep}"
    (tmp_path / "outdir").mkdir()
    with HostileWorker(process="drip_headers", delay=0.2) as bad:
        env = {**os.environ, "COORDINATOR_READ_TIMEOUT": "60", "COORDINATOR_WORKERS": bad.url}
        proc = subprocess.Popen([sys.executable, "-m", "coordinator", "process", *names, "-o", out,
                                 "--plan", OP, "--jobs", "2"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while bad.requests["/process"] < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert bad.requests["/process"] >= 1, "no strip reached the dripping worker"
        time.sleep(0.3)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the CLI still runs 10 s after Ctrl-C")
        seconds = time.monotonic() - interrupted
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert seconds < 5, f"Ctrl-C took {seconds:.1f} s"  # aim is < 1 s; generous for a loaded machine
