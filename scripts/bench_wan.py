"""`make bench`, WAN part: the coordinator against the original design over a 50 Mbit/s,
40 ms RTT link.

    python -m scripts.bench_wan [--runs 3] [--megapixels 12] [--rate-mbit 50] [--rtt-ms 40] [--designs a,s,c]

Needs root and iproute2 (prints one `skip:` line and exits 0 otherwise). Builds a network
namespace behind a veth pair with tbf on both ends and a delaying relay (scripts/wan.py),
starts both workers inside it, measures the link, then times, interleaved, over that link:
  (a) the coordinator, lossless (auto transport: JPEG rows cut without re-encoding up,
      each op's lossless reply codec down: codecs.LOSSLESS_REPLY), JPEG bytes in -> stitched PNG out;
  (s) (a) as before the overlap: input decoded before the job, all jpegtran cuts at once, output
      PNG encoded after the job (an A/B);
  (r) (a) with PNG replies for every op (the reply policy before WebP), an A/B of the codecs;
  (p) the coordinator with PNG strips up (what auto does for non-JPEG inputs), same replies;
  (h) the coordinator with `--wire-quality high` (JPEG q95 replies);
  (c) the original design, re-created in scripts/bench.py (PNG 6 strips one after the
      other, multipart, the workers' default PNG reply, final PNG 6).
Bytes on the wire are the veth's counters (headers included). Also prints a table of strip
codecs: bytes, CPU and the transfer time they imply at the measured throughput; for replies, per
runtime and op, with the coordinator's decode CPU, the chosen one starred.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from coordinator import codecs, imaging, job, pngfast
from coordinator.config import CoordinatorConfig
from scripts import wan
from scripts.bench import coordinator_run, decoded, one_process_run, original_run, photo_jpeg
from scripts.testkit.procs import ROOT, wait_http_ok, worker_command
from stripes.roles import ROLE_SPECS

OUTER_PORTS = {spec.runtime: spec.port for spec in ROLE_SPECS.values()}  # as on a real host
INNER_PORTS = {runtime: 10000 + port for runtime, port in OUTER_PORTS.items()}
PROBE_INNER, PROBE_OUTER = 15009, 5009


def start_fleet(link: wan.WanLink, log_dir: Path) -> list[str]:
    """Both workers and the probe inside the namespace, behind the relay; returns worker URLs."""
    for runtime, port in INNER_PORTS.items():
        command, cwd = worker_command(runtime)
        link.spawn(
            command,
            cwd=cwd,
            log=log_dir / f"{runtime}.log",
            env={"WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(port), "WORKER_LOG_LEVEL": "warning"},
        )
    link.spawn([sys.executable, "-m", "scripts.wan", "probe-server", "--port", str(PROBE_INNER)], cwd=ROOT)
    link.wait_inner(PROBE_INNER)
    link.start_relay({**{OUTER_PORTS[r]: INNER_PORTS[r] for r in INNER_PORTS}, PROBE_OUTER: PROBE_INNER})
    urls = [f"http://{link.ns_address}:{OUTER_PORTS[runtime]}" for runtime in INNER_PORTS]
    for url in urls:
        wait_http_ok(url + "/healthz", timeout=60)
    return urls


def timed(link: wan.WanLink, run) -> tuple[bytes, dict]:
    sent, received = link.wire_bytes()
    out, parts = run()
    sent_after, received_after = link.wire_bytes()
    parts["up_bytes"], parts["down_bytes"] = sent_after - sent, received_after - received
    return out, parts


def codec_table(jpeg: bytes, urls: list[str], link_mbit: tuple[float, float], level: int) -> list[str]:
    """Upload codecs for the top strip (coordinator CPU) and reply codecs per runtime (worker CPU)."""
    pixels = imaging.decode_pixels(jpeg, 10**9)
    height = pixels.shape[0]
    rows = pixels[: height // 2]
    up, down = (rate * 1e6 / 8 for rate in link_mbit)
    lines = [
        f"strip codecs, top half ({rows.shape[1]}x{rows.shape[0]}); wire s = bytes / measured throughput",
        f"  {'upload (coordinator encodes)':44}{'MB':>7}{'CPU ms':>8}{'wire s':>8}{'sum s':>7}",
    ]

    def up_row(name, encode):
        started = time.perf_counter()
        body = encode()
        cpu = time.perf_counter() - started
        lines.append(
            f"  {name:44}{len(body) / 1e6:7.2f}{cpu * 1000:8.0f}{len(body) / up:8.2f}{cpu + len(body) / up:7.2f}"
        )

    up_row("raw PPM", lambda: imaging.encode_ppm(rows))
    up_row("PNG level 1 (pngfast, 1 thread)", lambda: pngfast.encode_png(rows, level=1, threads=1))
    up_row(f"PNG level {level} (pngfast, 1 thread)", lambda: pngfast.encode_png(rows, level=level, threads=1))
    up_row("WebP lossless, method 0", lambda: imaging.encode_strip(rows, "webp-lossless")[0])
    source = codecs.jpeg_source(jpeg)
    if source is not None:
        up_row("JPEG rows cut by jpegtran (no re-encode)", lambda: codecs.jpeg_rows(source, 0, height // 2)[0])
        body = codecs.jpeg_rows(source, 0, height // 2)[0]
        content_type = "image/jpeg"
    else:
        lines.append("  JPEG cut: jpegtran not found (Debian libjpeg-turbo-progs)")
        body, content_type = imaging.encode_ppm(rows), "image/x-portable-pixmap"
    lines.append(
        f"  {'reply (worker: X-Processing-Ms; coordinator decodes)':50}{'MB':>7}{'wk ms':>7}{'dec ms':>7}"
        f"{'wire s':>7}{'sum s':>7}{'PSNR dB':>9}"
    )
    with requests.Session() as session:
        for url, runtime in zip(urls, ("python", "nodejs"), strict=True):
            for op in REPLY_OPS:
                upload = (body, content_type, (rows.shape[1], rows.shape[0]))
                lines += reply_rows(session, f"{url}/process", runtime, op, upload, down)
    lines.append("  * = what the coordinator asks for (codecs.reply_query); eN qM: WebP effort N, quality M")
    return lines


REPLY_OPS = ("grayscale", "sepia", "invert", "blur")
FAST_WEBP = codecs.WEBP_LOSSLESS_FAST


def reply_codecs(runtime: str, op: str, size: tuple[int, int]) -> list[tuple[str, dict]]:
    chosen = codecs.reply_query("jpeg-cut", "lossless", runtime, op, size)
    candidates = [
        ("PNG level 1", {"format": "png", "compression": "1", "channels": "auto"}),
        ("PNG level 6", {"format": "png", "compression": "6", "channels": "auto"}),
        ("WebP lossless e0 q1", FAST_WEBP),
        ("WebP lossless e1 q1", {**FAST_WEBP, "compression": "2"}),
        (f"JPEG q{codecs.HIGH_QUALITY} (high)", {"format": "jpeg", "quality": str(codecs.HIGH_QUALITY)}),
    ]
    if op == "grayscale":
        candidates.insert(0, ("raw", {"format": "raw"}))
    return [(("* " if query in (chosen, HIGH) else "  ") + label, query) for label, query in candidates]


HIGH = codecs.reply_query("jpeg-cut", "high", None)
DESIGNS = ("a", "s", "r", "p", "h", "c")


# The reply policy before per-op codecs: PNG for every op, level 1 from python, 6 from nodejs.
PNG_REPLIES = {runtime: dict.fromkeys(REPLY_OPS, ("png", level)) for runtime, level in (("python", 1), ("nodejs", 6))}


@contextlib.contextmanager
def cut_slots(count: int):
    """Run with `count` jpegtran cuts at once (job.CUT_SLOTS; an A/B of cutting one per core)."""
    saved, job.CUT_SLOTS = job.CUT_SLOTS, threading.BoundedSemaphore(count)
    try:
        yield
    finally:
        job.CUT_SLOTS = saved


@contextlib.contextmanager
def reply_table(table: dict):
    """Run with another per-runtime, per-op lossless reply table (an A/B of codecs.LOSSLESS_REPLY)."""
    saved, codecs.LOSSLESS_REPLY = codecs.LOSSLESS_REPLY, table
    try:
        yield
    finally:
        codecs.LOSSLESS_REPLY = saved


def reply_rows(session, endpoint: str, runtime: str, op: str, upload: tuple, down: float) -> list[str]:
    """One line per reply codec of `op` on one worker: bytes, worker ms, coordinator decode ms
    (CPU), PSNR against the op's first (lossless) reply. upload: (body, content type, size)."""
    body, content_type, size = upload
    headers = {"Content-Type": content_type}
    lines, exact = [], None
    for label, query in reply_codecs(runtime, op, size):
        params = {"op": op, **query, **({"radius": "4"} if op == "blur" else {})}
        reply = session.post(endpoint, params=params, data=body, headers=headers, timeout=120)
        reply.raise_for_status()
        started = time.process_time()
        got = imaging.decode_any(reply.content, gray_ok=True)
        decode_ms = (time.process_time() - started) * 1000
        got = got if got.ndim == 3 else np.repeat(got[:, :, None], 3, axis=2)  # gray: R=G=B
        exact = got if exact is None else exact  # the first codec of each op is lossless
        quality = codecs.psnr(exact, got)
        worker_s = float(reply.headers.get("X-Processing-Ms", "nan")) / 1000
        wire_s = len(reply.content) / down
        lines.append(
            f"  {runtime + ' ' + op + ', ' + label:50}{len(reply.content) / 1e6:7.2f}{worker_s * 1000:7.0f}"
            f"{decode_ms:7.0f}{wire_s:7.2f}{worker_s + wire_s + decode_ms / 1000:7.2f}"
            f"{'exact' if quality == float('inf') else f'{quality:.1f}':>9}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_wan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="input size (default 12)")
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="link rate each way (default 50)")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round trip time (default 40)")
    parser.add_argument("--designs", default=",".join(DESIGNS), help=f"which to time (default {','.join(DESIGNS)})")
    parser.add_argument("--no-codecs", action="store_true", help="skip the strip codec table")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.designs.split(",") if name.strip()]
    if not chosen or not set(chosen) <= set(DESIGNS) or not {"a", "c"} <= set(chosen):
        parser.error(f"--designs: a comma list of {','.join(DESIGNS)} with a and c in it")
    reason = wan.unavailable_reason()
    if reason:
        print(f"skip: WAN benchmark {reason}")
        return 0
    runs = max(1, args.runs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the namespace is removed on kill too
    level = CoordinatorConfig().png_level
    jpeg = photo_jpeg(args.megapixels)
    size = Image.open(io.BytesIO(jpeg)).size
    with (
        tempfile.TemporaryDirectory(prefix="bench-wan-") as tmp,
        wan.WanLink(rate_mbit=args.rate_mbit, delay_ms=args.rtt_ms / 2) as link,
    ):
        urls = start_fleet(link, Path(tmp))
        measured = wan.measure_link(link.ns_address, PROBE_OUTER)
        print(
            f"WAN link: namespace {link.name}, veth {link.host_address} <-> {link.ns_address}, "
            f"tbf {args.rate_mbit:g} Mbit/s each way + relay {args.rtt_ms / 2:g} ms each way"
        )
        print(
            f"  measured: RTT {measured.rtt_ms:.1f} ms, upload {measured.upload_mbit:.1f} Mbit/s, "
            f"download {measured.download_mbit:.1f} Mbit/s"
        )
        print(
            f"input: {size[0]}x{size[1]} JPEG, {len(jpeg) / 1e6:.2f} MB; {runs} runs each; "
            f"shared machine, other work may be running: treat small differences as noise"
        )
        print()
        for line in (
            [] if args.no_codecs else codec_table(jpeg, urls, (measured.upload_mbit, measured.download_mbit), level)
        ):
            print(line)
        # a SYN lost in a full tbf queue is resent after 1 s: 2 s would fail over needlessly
        base = CoordinatorConfig(
            workers=tuple(urls), source="bench_wan", png_level=level, connect_timeout=5, read_timeout=300
        )
        designs = {
            "a": ("coordinator, lossless (auto: JPEG cut up, per-op codec down)", base),
            "s": ("(a) without overlap: decode, all cuts at once, encode after", base),
            "r": ("coordinator, lossless, PNG replies only (the policy before WebP)", base),
            "p": ("coordinator, lossless, PNG up, per-op codec down", dataclasses.replace(base, transport="png")),
        }
        if "wire_quality" in {f.name for f in dataclasses.fields(CoordinatorConfig)}:
            designs["h"] = (
                f"coordinator, --wire-quality high (JPEG q{codecs.HIGH_QUALITY} down)",
                dataclasses.replace(base, wire_quality="high"),
            )
        designs = {name: designs[name] for name in chosen if name in designs}
        samples: dict[str, list[dict]] = {name: [] for name in (*designs, "c")}
        outputs: dict[str, bytes] = {}
        coordinator_run(jpeg, base, level)  # warm-up: imports, connections
        for _ in range(runs):  # interleaved, so background load hits all alike
            for name in samples:
                if name == "c":
                    out, parts = timed(link, lambda: original_run(jpeg, urls))
                else:
                    with (
                        reply_table(PNG_REPLIES if name == "r" else codecs.LOSSLESS_REPLY),
                        cut_slots(64) if name == "s" else contextlib.nullcontext(),
                    ):
                        run = functools.partial(coordinator_run, jpeg, designs[name][1], level, name != "s")
                        out, parts = timed(link, run)
                samples[name].append(parts)
                outputs[name] = out
    reference = decoded(one_process_run(jpeg, level)[0])
    print()
    print(f"end to end over the link: JPEG in -> PNG out ({runs} runs, medians)")
    print(f"  {'':5}{'design':62}{'median s':>9}{'min-max':>12}{'up MB':>7}{'down MB':>8}{'(c)/x':>7}{'vs exact':>10}")
    original_s = statistics.median(p["total_ms"] for p in samples["c"]) / 1000
    rows = [
        *((name, text) for name, (text, _) in designs.items()),
        ("c", "original: PNG 6 strips one by one, PNG 6 replies, PNG 6 out"),
    ]
    failed = False
    for name, text in rows:
        seconds = statistics.median(p["total_ms"] for p in samples[name]) / 1000
        up = statistics.median(p["up_bytes"] for p in samples[name]) / 1e6
        down = statistics.median(p["down_bytes"] for p in samples[name]) / 1e6
        got = decoded(outputs[name])
        if name == "h":
            quality = codecs.psnr(reference, got)
            verdict = f"{quality:.1f} dB"
            failed |= quality < codecs.HIGH_PSNR_DB
        else:
            difference = int(np.abs(got.astype(int) - reference.astype(int)).max())
            verdict = "exact" if difference == 0 else f"max {difference}"
            failed |= difference > 1
        totals = [p["total_ms"] / 1000 for p in samples[name]]
        spread = f"{min(totals):.2f}-{max(totals):.2f}"
        print(
            f"  ({name}) {text:62}{seconds:9.2f}{spread:>12}{up:7.1f}{down:8.1f}"
            f"{original_s / seconds:7.1f}{verdict:>10}"
        )
    a = statistics.median(p["total_ms"] for p in samples["a"]) / 1000
    print()
    floor = statistics.median(p["down_bytes"] for p in samples["a"]) * 8 / (measured.download_mbit * 1e6)
    print(
        f"(c)/(a) = {original_s / a:.1f}x  (target >= 8x); (a)'s replies alone need {floor:.2f} s at the "
        f"measured {measured.download_mbit:.0f} Mbit/s, so no lossless run beats (c)/{floor:.2f} s = "
        f"{original_s / floor:.1f}x"
    )
    print("where (a)'s time goes (medians, ms):")
    for key, text in (
        ("decode_ms", "decode JPEG (none when its rows are cut losslessly)"),
        ("discover_ms", "GET /healthz on both workers (1 RTT)"),
        ("dispatch_ms", "dispatch: cut/encode, upload, worker, download, decode, stitch, deflate"),
        ("worker_ms", "  of which the slower worker's own time (X-Processing-Ms)"),
        ("png_finish_ms", f"PNG level {level}: the chunks left after the last reply, and the file"),
    ):
        print(f"  {text:62}{statistics.median(p.get(key, 0) for p in samples['a']):8.0f}")
    if failed:
        print(
            "error: an output is off (lossless differs from the one-process result, or high is under "
            f"{codecs.HIGH_PSNR_DB} dB)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
