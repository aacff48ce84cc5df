"""`python -m coordinator` as a user runs it, against the real workers: exit codes, one-line
errors, atomic outputs, batches."""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from coordinator import cli
from tests.support.procs import ROOT

ERROR_EXITS = {"usage": 2, "input": 2, "no_worker": 3, "unexpected": 1}


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def picture(path, height=41, width=30, fmt=None) -> np.ndarray:
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return pixels


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_help_for_each_command():
    for args in ([], ["process"], ["workers"]):
        done = run_cli(*args, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout


def test_process_one_image(local_fleet, tmp_path):
    pixels = picture(tmp_path / "in.png")
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--plan", "invert",
                   "--strips", "3", "--workers", ",".join(local_fleet))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)
    summary = done.stderr.strip().splitlines()
    assert len(summary) == 3 and all("invert on http://127.0.0.1:" in line for line in summary)
    assert leftovers(tmp_path) == []
    quiet = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.webp"), "--quiet",
                    "--workers", ",".join(local_fleet))
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert Image.open(tmp_path / "out.webp").format == "WEBP"


def test_process_blur_through_the_env_worker_list(local_fleet, tmp_path):
    picture(tmp_path / "in.jpg", 60, 40)
    done = run_cli("process", str(tmp_path / "in.jpg"), "-o", str(tmp_path / "out.png"), "--plan", "blur",
                   "--radius", "3", env={"COORDINATOR_WORKERS": ",".join(local_fleet)})
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (40, 60)


@pytest.mark.parametrize("case, words", [
    ("empty", "input is empty"),
    ("truncated", "truncated"),
    ("text", "not an image"),
    ("huge", "over the limit of 1000 (COORDINATOR_MAX_PIXELS)"),
    ("missing", "cannot read"),
])
def test_bad_inputs_exit_2_and_write_nothing(local_fleet, tmp_path, case, words):
    source = tmp_path / "in.png"
    picture(source)
    data = source.read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"hello", "huge": data}.get(case)
    if content is not None:
        source.write_bytes(content)
    else:
        source.unlink()
    done = run_cli("process", str(source), "-o", str(tmp_path / "out.png"), "--workers", ",".join(local_fleet),
                   env={"COORDINATOR_MAX_PIXELS": "1000" if case == "huge" else "100000"})
    assert_one_error_line(done, 2, words)
    assert not (tmp_path / "out.png").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["process", "in.png"], "the following arguments are required: -o"),
    (["process", "in.png", "-o", "out.gif"], "cannot write .gif"),
    (["process", "in.png", "-o", "out.png", "--plan", "sepia,invert", "--strips", "3"],
     "plan lists 2 ops but there are 3 strips"),
    (["process", "in.png", "-o", "out.png", "--strips", "0"], "--strips must be >= 1"),
    (["process", "in.png", "-o", "out.png", "--plan", "blur", "--radius", "80"], "radius 80 is out of range"),
    (["process", "in.png", "-o", "out.png", "--workers", "localhost:5001"], "--workers: 'localhost:5001'"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(local_fleet, tmp_path, args, words):
    picture(tmp_path / "in.png")
    args = [str(tmp_path / a) if a.startswith(("in.", "out.")) else a for a in args]
    if "--workers" not in args and args[0] == "process":
        args += ["--workers", ",".join(local_fleet)]
    assert_one_error_line(run_cli(*args), 2, words)


def test_bad_setting_exits_2_naming_it():
    assert_one_error_line(run_cli("workers", env={"COORDINATOR_CONNECT_TIMEOUT": "-1"}), 2,
                          "COORDINATOR_CONNECT_TIMEOUT=-1 is out of range")


def test_no_worker_exits_3(tmp_path):
    picture(tmp_path / "in.png")
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                   "--workers", "http://127.0.0.1:9")
    assert_one_error_line(done, 3, "no healthy worker offers grayscale (strip 1): http://127.0.0.1:9: unreachable")
    assert not (tmp_path / "out.png").exists()


def test_an_unreachable_worker_is_reported_not_fatal(python_worker, tmp_path):
    pixels = picture(tmp_path / "in.png")
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--plan", "invert",
                   "--workers", f"http://127.0.0.1:9,{python_worker.url}")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "warning: worker http://127.0.0.1:9 skipped: unreachable: connection refused"
    assert all(python_worker.url in line for line in lines[1:])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)


def test_batch_goes_on_past_a_bad_input(local_fleet, tmp_path):
    good = [picture(tmp_path / "a.png", 20), picture(tmp_path / "c.bmp", 33, fmt="BMP")]
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    done = run_cli("process", *(str(tmp_path / n) for n in ("a.png", "b.jpg", "c.bmp")), "-o", str(out),
                   "--plan", "invert", "--jobs", "2", "--quiet", "--workers", ",".join(local_fleet))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'b.jpg'}: input is not an image (10 bytes of an unknown format)",
        "error: 1 of 3 inputs failed"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    for name, pixels in zip(("a", "c"), good):
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), 255 - pixels)


def test_batch_names_that_collide_are_refused(local_fleet, tmp_path):
    picture(tmp_path / "a.png")
    picture(tmp_path / "a.bmp", fmt="BMP")
    done = run_cli("process", str(tmp_path / "a.png"), str(tmp_path / "a.bmp"), "-o", str(tmp_path / "out"),
                   "--workers", ",".join(local_fleet))
    assert_one_error_line(done, 2, "would both be written to")


def test_workers_table(local_fleet, python_worker):
    done = run_cli("workers", "--workers", f"{python_worker.url},http://127.0.0.1:9")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["URL", "RUNTIME", "OPERATIONS", "LATENCY", "STATUS"]
    assert python_worker.url in lines[1] and "python" in lines[1] and lines[1].rstrip().endswith("ok")
    assert "unreachable: connection refused" in lines[2]
    assert_one_error_line(run_cli("workers", "--workers", "http://127.0.0.1:9"), 3, "no worker is healthy")


def test_unexpected_failure_is_one_line_exit_1(local_fleet, tmp_path, monkeypatch, capsys):
    picture(tmp_path / "in.png")

    def broken(*args, **kwargs):
        raise RuntimeError("encoder exploded\nwith a second line")

    monkeypatch.setattr(cli.imaging, "encode_output", broken)
    monkeypatch.delenv("COORDINATOR_WORKERS", raising=False)
    code = cli.main(["process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                     "--workers", ",".join(local_fleet)])
    err = capsys.readouterr().err
    assert code == 1 and err == "error: unexpected RuntimeError: encoder exploded with a second line\n"
    assert not (tmp_path / "out.png").exists() and leftovers(tmp_path) == []


def test_output_is_replaced_atomically(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    cli.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def no_rename(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "replace", no_rename)
    with pytest.raises(OSError):
        cli.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_png_output_decodes_like_pillow(local_fleet, tmp_path):
    pixels = picture(tmp_path / "in.png", 300, 200)
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--plan", "grayscale",
                   "--workers", ",".join(local_fleet))
    assert done.returncode == 0, done.stderr
    out = np.asarray(Image.open(io.BytesIO((tmp_path / "out.png").read_bytes())))
    red, green, blue = (pixels[..., channel].astype(np.uint32) for channel in range(3))
    gray = (19595 * red + 38470 * green + 7471 * blue + 32768) >> 16
    assert np.abs(out.astype(int) - gray[..., None].astype(int)).max() <= 1


def test_progress_bar_only_on_a_terminal(local_fleet, tmp_path):
    picture(tmp_path / "in.png", 200, 50)
    controller, terminal = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "coordinator", "process", str(tmp_path / "in.png"), "-o",
                                 str(tmp_path / "out.png"), "--strips", "4", "--workers", ",".join(local_fleet)],
                                cwd=ROOT, env={**clean, "COLUMNS": "100"}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed when the process exited
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(controller)
    text = shown.decode(errors="replace")
    assert "strips" in text and "\x1b[" in text  # rich drew the bar
    assert text.count("strip ") >= 4 and "Traceback" not in text
