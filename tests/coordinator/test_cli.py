"""`python -m coordinator` as a user runs it, against the real workers: exit codes, one-line
errors, atomic outputs, batches."""

from __future__ import annotations

import io
import json
import os
import pty
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from coordinator import cli
from scripts.testkit.cli import assert_one_error_line, clean_env, run_cli
from scripts.testkit.faultproxy import FaultProxy
from scripts.testkit.procs import ROOT
from tests.support.moto_server import REGION, aws_env

ERROR_EXITS = {"usage": 2, "input": 2, "no_worker": 3, "unexpected": 1}


def picture(path, height=41, width=30, fmt=None) -> np.ndarray:
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return pixels


def process_args(tmp_path, out: str = "out.png") -> list[str]:
    """`process <tmp_path>/in.png -o <tmp_path>/<out>`: the start of most commands here."""
    return ["process", str(tmp_path / "in.png"), "-o", str(tmp_path / out)]


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_help_for_each_command():
    for args in ([], ["process"], ["workers"]):
        done = run_cli(*args, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout


def test_process_one_image(local_fleet, tmp_path):
    pixels = picture(tmp_path / "in.png")
    done = run_cli(
        *process_args(tmp_path),
        "--plan",
        "invert",
        "--strips",
        "3",
        "--workers",
        ",".join(local_fleet),
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)
    *summary, wrote = done.stderr.strip().splitlines()
    assert len(summary) == 3 and all("invert on http://127.0.0.1:" in line for line in summary)
    assert wrote.startswith(f"wrote {tmp_path / 'out.png'} (")
    assert leftovers(tmp_path) == []
    quiet = run_cli(
        *process_args(tmp_path, "out.webp"),
        "--quiet",
        "--workers",
        ",".join(local_fleet),
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert Image.open(tmp_path / "out.webp").format == "WEBP"


def test_process_blur_through_the_env_worker_list(local_fleet, tmp_path):
    picture(tmp_path / "in.jpg", 60, 40)
    done = run_cli(
        "process",
        str(tmp_path / "in.jpg"),
        "-o",
        str(tmp_path / "out.png"),
        "--plan",
        "blur",
        "--radius",
        "3",
        env={"COORDINATOR_WORKERS": ",".join(local_fleet)},
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (40, 60)


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty", "input is empty"),
        ("truncated", "truncated"),
        ("text", "not an image"),
        ("huge", "over the limit of 1000 (COORDINATOR_MAX_PIXELS)"),
        ("missing", "cannot read"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(local_fleet, tmp_path, case, words):
    source = tmp_path / "in.png"
    picture(source)
    data = source.read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"hello", "huge": data}.get(case)
    if content is not None:
        source.write_bytes(content)
    else:
        source.unlink()
    done = run_cli(
        "process",
        str(source),
        "-o",
        str(tmp_path / "out.png"),
        "--workers",
        ",".join(local_fleet),
        env={"COORDINATOR_MAX_PIXELS": "1000" if case == "huge" else "100000"},
    )
    assert_one_error_line(done, 2, words)
    assert not (tmp_path / "out.png").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["process", "in.png"], "the following arguments are required: -o"),
        (["process", "in.png", "-o", "out.gif"], "cannot write .gif"),
        (
            ["process", "in.png", "-o", "out.png", "--plan", "sepia,invert", "--strips", "3"],
            "plan lists 2 ops but there are 3 strips",
        ),
        (["process", "in.png", "-o", "out.png", "--strips", "0"], "--strips must be >= 1"),
        (["process", "in.png", "-o", "out.png", "--plan", "blur", "--radius", "80"], "radius 80 is out of range"),
        (
            ["process", "in.png", "-o", "out.png", "--workers", "ftp://localhost:5001"],
            "--workers: 'ftp://localhost:5001'",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(local_fleet, tmp_path, args, words):
    picture(tmp_path / "in.png")
    args = [str(tmp_path / a) if a.startswith(("in.", "out.")) else a for a in args]
    if "--workers" not in args and args[0] == "process":
        args += ["--workers", ",".join(local_fleet)]
    assert_one_error_line(run_cli(*args), 2, words)


def test_bad_setting_exits_2_naming_it():
    assert_one_error_line(
        run_cli("workers", env={"COORDINATOR_CONNECT_TIMEOUT": "-1"}),
        2,
        "COORDINATOR_CONNECT_TIMEOUT=-1 is out of range",
    )


def test_no_worker_exits_3(tmp_path):
    picture(tmp_path / "in.png")
    done = run_cli(*process_args(tmp_path), "--workers", "http://127.0.0.1:9")
    assert_one_error_line(done, 3, "no healthy worker offers grayscale (strip 1): http://127.0.0.1:9: unreachable")
    assert not (tmp_path / "out.png").exists()


def test_an_unreachable_worker_is_reported_not_fatal(python_worker, tmp_path):
    pixels = picture(tmp_path / "in.png")
    done = run_cli(
        *process_args(tmp_path),
        "--plan",
        "invert",
        "--workers",
        f"http://127.0.0.1:9,{python_worker.url}",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "warning: worker http://127.0.0.1:9 skipped: unreachable: connection refused"
    assert all(python_worker.url in line for line in lines[1:-1]) and lines[-1].startswith("wrote ")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)


def test_batch_goes_on_past_a_bad_input(local_fleet, tmp_path):
    good = [picture(tmp_path / "a.png", 20), picture(tmp_path / "c.bmp", 33, fmt="BMP")]
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    done = run_cli(
        "process",
        *(str(tmp_path / n) for n in ("a.png", "b.jpg", "c.bmp")),
        "-o",
        f"{out}/",
        "--plan",
        "invert",
        "--jobs",
        "2",
        "--quiet",
        "--workers",
        ",".join(local_fleet),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'b.jpg'}: input is not an image (10 bytes of an unknown format)",
        "error: 3 inputs: 2 written, 1 failed (exit 2)",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    for name, pixels in zip(("a", "c"), good, strict=True):
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), 255 - pixels)


def test_batch_names_that_collide_are_refused(local_fleet, tmp_path):
    picture(tmp_path / "a.png")
    picture(tmp_path / "a.bmp", fmt="BMP")
    done = run_cli(
        "process",
        str(tmp_path / "a.png"),
        str(tmp_path / "a.bmp"),
        "-o",
        f"{tmp_path / 'out'}/",
        "--workers",
        ",".join(local_fleet),
    )
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

    monkeypatch.setattr("coordinator.pngfast.assemble", broken)  # the PNG file, as the job streams it or after
    monkeypatch.delenv("COORDINATOR_WORKERS", raising=False)
    code = cli.main([*process_args(tmp_path), "--workers", ",".join(local_fleet)])
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
    done = run_cli(
        *process_args(tmp_path),
        "--plan",
        "grayscale",
        "--workers",
        ",".join(local_fleet),
    )
    assert done.returncode == 0, done.stderr
    out = np.asarray(Image.open(io.BytesIO((tmp_path / "out.png").read_bytes())))
    red, green, blue = (pixels[..., channel].astype(np.uint32) for channel in range(3))
    gray = (19595 * red + 38470 * green + 7471 * blue + 32768) >> 16
    assert np.abs(out.astype(int) - gray[..., None].astype(int)).max() <= 1


def on_a_terminal(args: list[str], env: dict) -> tuple[int, str]:
    """`python -m coordinator ARGS` with stderr on a pseudo-terminal: its exit code and what it showed."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
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
        code = proc.wait(timeout=60)
    finally:
        os.close(controller)
    return code, shown.decode(errors="replace")


def test_progress_bar_only_on_a_terminal(local_fleet, tmp_path):
    picture(tmp_path / "in.png", 200, 50)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    args = [*process_args(tmp_path), "--strips", "4", "--workers", ",".join(local_fleet)]
    code, text = on_a_terminal(args, {**clean, "COLUMNS": "100"})
    assert code == 0
    assert "strips" in text and "\x1b[" in text  # rich drew the bar
    assert text.count("strip ") >= 4 and "Traceback" not in text


# -- what a new user meets (issue 12, issue 11 items 14 and 16) ---------------------------------


def fleet_args(fleet) -> list[str]:
    return ["--workers", ",".join(fleet)]


def test_never_writes_over_an_input(local_fleet, tmp_path):
    picture(tmp_path / "same.png")
    before = (tmp_path / "same.png").read_bytes()
    done = run_cli(
        "process", str(tmp_path / "same.png"), "-o", str(tmp_path / "same.png"), "--overwrite", *fleet_args(local_fleet)
    )
    assert_one_error_line(done, 2, "over its input")
    picture(tmp_path / "chelsea.jpg", fmt="JPEG")
    done = run_cli(
        "process",
        str(tmp_path / "same.png"),
        str(tmp_path / "chelsea.jpg"),
        "-o",
        f"{tmp_path}/",
        *fleet_args(local_fleet),
    )
    assert_one_error_line(done, 2, "over its input")
    assert (tmp_path / "same.png").read_bytes() == before and not (tmp_path / "chelsea.png").exists()


def test_an_existing_output_needs_overwrite(local_fleet, tmp_path):
    pixels = picture(tmp_path / "in.png")
    (tmp_path / "out.png").write_bytes(b"precious")
    done = run_cli(*process_args(tmp_path), *fleet_args(local_fleet))
    assert_one_error_line(done, 2, "exists; pass --overwrite")
    assert (tmp_path / "out.png").read_bytes() == b"precious"
    (tmp_path / "out.png").chmod(0o640)
    done = run_cli(
        *process_args(tmp_path),
        "--overwrite",
        "--plan",
        "invert",
        *fleet_args(local_fleet),
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o640  # a replaced file keeps its mode


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_are_created_by_the_umask(local_fleet, tmp_path, umask, mode):
    picture(tmp_path / "in.png")
    done = run_cli(
        *process_args(tmp_path),
        *fleet_args(local_fleet),
        preexec_fn=lambda: os.umask(umask),
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == mode


def test_the_stripes_command_runs_from_any_directory(local_fleet, tmp_path):
    command = Path(sys.executable).parent / "stripes"
    assert command.exists(), "make setup installs the coordinator package (pip install -e .)"
    pixels = picture(tmp_path / "photo.png")
    done = subprocess.run(
        [str(command), "process", "photo.png", "-o", "out.png", "--plan", "invert", *fleet_args(local_fleet)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - pixels)
    assert (
        "usage: stripes" in subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=30).stdout
    )
    elsewhere = run_cli("--version", cwd=tmp_path)  # python -m coordinator too, from outside the checkout
    assert elsewhere.returncode == 0 and elsewhere.stdout.startswith("stripes "), elsewhere.stderr


def rgba_picture(path, height=48, width=32) -> np.ndarray:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[: height // 3, :, 3] = 0  # a transparent band, as around a logo
    Image.fromarray(pixels).save(path)
    return pixels


def test_transparency_passes_through(local_fleet, tmp_path):
    rgba = rgba_picture(tmp_path / "logo.png")
    for out in ("out.png", "out.tif"):
        done = run_cli(
            "process",
            str(tmp_path / "logo.png"),
            "-o",
            str(tmp_path / out),
            "--plan",
            "invert",
            "--strips",
            "3",
            "--quiet",
            *fleet_args(local_fleet),
        )
        assert done.returncode == 0, done.stderr
        got = np.asarray(Image.open(tmp_path / out))
        assert got.shape == rgba.shape and np.array_equal(got[..., 3], rgba[..., 3])
        assert np.array_equal(got[..., :3], 255 - rgba[..., :3])
    done = run_cli(
        "process",
        str(tmp_path / "logo.png"),
        "-o",
        str(tmp_path / "out.webp"),
        "--plan",
        "invert",
        "--quiet",
        *fleet_args(local_fleet),
    )
    assert done.returncode == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "out.webp"))[..., 3], rgba[..., 3])


def test_blur_blurs_alpha_like_pillow(local_fleet, tmp_path):
    rgba = rgba_picture(tmp_path / "logo.png", 60, 40)
    done = run_cli(
        "process",
        str(tmp_path / "logo.png"),
        "-o",
        str(tmp_path / "out.png"),
        "--plan",
        "blur",
        "--radius",
        "3",
        "--strips",
        "3",
        "--quiet",
        *fleet_args(local_fleet),
    )
    assert done.returncode == 0, done.stderr
    want = np.asarray(Image.fromarray(rgba).filter(ImageFilter.GaussianBlur(3)))
    got = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(got[..., 3], want[..., 3])
    assert np.abs(got[..., :3].astype(int) - want[..., :3].astype(int)).max() <= 1


def test_jpeg_output_is_flattened_onto_white_and_says_so(local_fleet, tmp_path):
    rgba = rgba_picture(tmp_path / "logo.png")
    done = run_cli(
        "process",
        str(tmp_path / "logo.png"),
        "-o",
        str(tmp_path / "out.ppm"),
        "--plan",
        "invert",
        *fleet_args(local_fleet),
    )
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "transparen" in line]
    assert len(notes) == 1 and notes[0].startswith("warning: ") and "white" in notes[0]
    alpha = rgba[..., 3:].astype(int)
    want = ((255 - rgba[..., :3].astype(int)) * alpha + 255 * (255 - alpha) + 127) // 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.ppm")).astype(int), want)


def test_output_directory_rules(local_fleet, tmp_path):
    picture(tmp_path / "a.png")
    picture(tmp_path / "b.png", 20)
    done = run_cli(
        "process",
        str(tmp_path / "a.png"),
        str(tmp_path / "b.png"),
        "-o",
        str(tmp_path / "single.png"),
        *fleet_args(local_fleet),
    )
    assert_one_error_line(done, 2, "2 inputs need -o to be a directory")
    assert not (tmp_path / "single.png").exists()
    done = run_cli(
        "process", str(tmp_path / "a.png"), "-o", f"{tmp_path / 'new' / 'dir'}/", "--quiet", *fleet_args(local_fleet)
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "new" / "dir" / "a.png").size == (30, 41)
    done = run_cli(
        "process",
        str(tmp_path / "b.png"),
        "-o",
        str(tmp_path / "new"),
        "--format",
        "jpeg",
        "--quiet",
        *fleet_args(local_fleet),
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "new" / "b.jpg").format == "JPEG"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--plan", "sepia", "--radius", "4"], "--radius applies to blur"),
        (["--quality", "80"], "--quality applies to JPEG and WebP"),
        (["--format", "webp"], "--format webp contradicts"),
        (["--strips", "100000"], "--strips 100000 is more than the 41 rows"),
        (["--plan", "frobnicate"], "unknown op 'frobnicate'"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(local_fleet, tmp_path, args, words):
    picture(tmp_path / "in.png")
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), *args, *fleet_args(local_fleet))
    assert_one_error_line(done, 2, words)
    assert not (tmp_path / "x.png").exists()


def test_help_lists_ops_defaults_examples_exit_codes():
    text = run_cli("process", "--help", env={"COLUMNS": "200"}).stdout
    for words in (
        "grayscale",
        "sepia",
        "invert",
        "blur",
        "default: seed",
        "default: 2.0",
        "examples:",
        "exit codes:",
        "--overwrite",
        "stdin",
    ):
        assert words in text, words
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("stripes ")


def test_stdin_to_stdout_and_a_worker_without_scheme(local_fleet, tmp_path):
    pixels = picture(tmp_path / "in.png")
    bare = ",".join(url.removeprefix("http://") for url in local_fleet)
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "process", "-", "-o", "-", "--plan", "invert", "--workers", bare],
        cwd=ROOT,
        env=clean_env(),
        input=(tmp_path / "in.png").read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(done.stdout))), 255 - pixels)


@pytest.mark.parametrize(
    "size, out, words",
    [
        ((17000, 2), "wide.webp", "WEBP stores at most 16,383 pixels a side"),
        ((70000, 1), "wide.jpg", "JPEG stores at most 65,535 pixels a side"),
    ],
)
def test_output_format_limits_refused_before_any_work(tmp_path, size, out, words):
    Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "in.png")
    # The only worker is unreachable: any work would end in exit 3, the early check in exit 2.
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / out), "--workers", "127.0.0.1:9")
    assert_one_error_line(done, 2, words)


def test_a_refused_output_comes_before_a_discovery_error(tmp_path):
    """The health probes start before the outputs are checked (they overlap numpy's import), yet
    their error is raised only after the checks: a refused output is still the one error."""
    picture(tmp_path / "in.png")
    (tmp_path / "out.png").write_bytes(b"precious")
    pools = [{"name": "pool-python-asg", "role": "worker-python", "runtime": "python", "port": 5001}]
    stack = {"workers": [], "pools": pools, "project": "htp", "stack": "dev", "region": REGION}
    (tmp_path / "outputs.json").write_text(json.dumps(stack))
    args = process_args(tmp_path)
    no_keys = aws_env(None, credentials=False)  # a pooled stack's discovery fails at once
    done = run_cli(*args, "--workers-file", str(tmp_path / "outputs.json"), env=no_keys)
    assert_one_error_line(done, 2, "exists; pass --overwrite")
    assert (tmp_path / "out.png").read_bytes() == b"precious"
    done = run_cli(*args, "--overwrite", "--workers-file", str(tmp_path / "outputs.json"), env=no_keys)
    assert_one_error_line(done, 2, "no AWS credentials")


def test_concurrent_jobs_are_bounded_by_pixels(python_worker, tmp_path):
    """--jobs 4 of images each 0.4 x COORDINATOR_MAX_PIXELS: only two are admitted at once
    (the budget is COORDINATOR_MAX_PIXELS). The worker never answers, so none finishes."""
    names = [str(tmp_path / f"in{index}.png") for index in range(4)]
    for name in names:
        picture(name, 50, 80)
    with FaultProxy(python_worker.url, mode="blackhole") as proxy:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "process",
                *names,
                "-o",
                f"{tmp_path}/out/",
                "--plan",
                "invert",
                "--strips",
                "1",
                "--jobs",
                "4",
                "--quiet",
                "--workers",
                proxy.url,
            ],
            cwd=ROOT,
            env=clean_env({"COORDINATOR_MAX_PIXELS": "10000", "COORDINATOR_READ_TIMEOUT": "60"}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while proxy.faulted < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # time for any further job to arrive, had it been admitted
            assert proxy.faulted == 2
        finally:
            proc.kill()
            proc.wait(timeout=10)


def test_wrote_line_and_batch_summary(local_fleet, tmp_path):
    picture(tmp_path / "a.png")
    done = run_cli("process", str(tmp_path / "a.png"), "-o", str(tmp_path / "a-out.png"), *fleet_args(local_fleet))
    assert done.returncode == 0, done.stderr
    size = cli.human_size((tmp_path / "a-out.png").stat().st_size)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'a-out.png'} ({size}, ") and last.endswith(" ms)"), last
    assert cli.human_size(999) == "999 bytes" and cli.human_size(3712) == "3.7 kB"
    picture(tmp_path / "b.png", 30)
    done = run_cli(
        "process", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", f"{tmp_path}/out/", *fleet_args(local_fleet)
    )
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "2 inputs: 2 written, 0 failed (exit 0)"


def test_progress_bar_reaches_the_total_when_an_input_fails(local_fleet, tmp_path):
    picture(tmp_path / "a.png", 200, 50)
    (tmp_path / "b.png").write_bytes(b"not a png")
    inputs = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    args = ["process", *inputs, "-o", f"{tmp_path}/out/", "--strips", "4", "--jobs", "1", *fleet_args(local_fleet)]
    code, text = on_a_terminal(args, clean_env({"COLUMNS": "100"}))
    assert code == 2
    assert "8/8" in text and "Traceback" not in text, text


def test_pixel_budget_always_admits_one_job():
    budget = cli.PixelBudget(10)
    with budget.hold(100):  # over the budget alone: runs rather than waits forever
        assert budget.used == 100
    with budget.hold(6), budget.hold(4):
        assert budget.used == 10
    assert budget.used == 0
