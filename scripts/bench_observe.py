"""`make bench`: what metrics and tracing cost (issue 18), 12 MP on loopback.

    python -m scripts.bench_observe [--runs 7] [--megapixels 12]

The same seed-plan job as scripts/bench.py's (a) (the coordinator in-process, 2 strips, one
Python and one Node worker, PNG out), against three pairs of workers started side by side:
  off      WORKER_METRICS=off (the benchmarking switch: nothing counted, no prom-client);
  metrics  the default, metrics always on;
  tracing  metrics on and OTEL_EXPORTER_OTLP_ENDPOINT set on the workers and the coordinator,
           exporting to a tiny OTLP/HTTP sink on 127.0.0.1 started here (it answers 200 and
           counts what it is sent).
Runs are interleaved (off, metrics, tracing, off, ...) so background load hits each alike;
prints medians, min-max and the ratio to `off` beside the targets (metrics <= 2%, tracing
<= 5% of wall time). Wall time on a shared machine: the load average is printed.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from coordinator import tracing
from coordinator.config import CoordinatorConfig
from scripts.bench import coordinator_run, one_size_args, photo_jpeg
from scripts.testkit.procs import start_worker

CASES = ("off", "metrics", "tracing")
TARGETS = {"metrics": 0.02, "tracing": 0.05}


class OtlpSink:
    """A loopback OTLP/HTTP receiver: 200 with an empty (valid protobuf) body for any POST."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.exports, sink.bytes = sink.exports + 1, sink.bytes + len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def worker_env(case: str, sink_url: str) -> dict:
    env = {"WORKER_LOG_LEVEL": "info", "WORKER_METRICS": "off" if case == "off" else "on"}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url} if case == "tracing" else {})
    return env


def one_run(case: str, jpeg: bytes, config: CoordinatorConfig, sink_url: str) -> float:
    """Wall ms of one job; the coordinator traces only in the `tracing` case."""
    if case == "tracing":
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink_url
    else:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    try:
        return coordinator_run(jpeg, config, config.png_level)[1]["total_ms"]
    finally:
        tracing.flush()  # the batch goes out between runs, not inside the next one's time


def print_table(samples: dict[str, list[float]], runs: int, megapixels: float) -> None:
    base = statistics.median(samples["off"])
    print(f"{megapixels:g} MP seed-plan job, loopback, {runs} interleaved runs each (wall ms)")
    print(f"{'case':<9} {'median':>8} {'min-max':>13} {'vs off':>8}  target")
    for case in CASES:
        median = statistics.median(samples[case])
        span = f"{min(samples[case]):.0f}-{max(samples[case]):.0f}"
        ratio = median / base - 1
        target = f"<= {TARGETS[case]:.0%}" if case in TARGETS else ""
        verdict = ("met" if ratio <= TARGETS[case] else "NOT met") if case in TARGETS else ""
        print(f"{case:<9} {median:>8.0f} {span:>13} {ratio:>+8.1%}  {target} {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = one_size_args(argv, __doc__.splitlines()[0], 7, "runs per case")
    if args is None:
        return 2
    print(f"observability overhead; shared machine, load average {os.getloadavg()[0]:.1f} at the start")
    sink, jpeg = OtlpSink(), photo_jpeg(args.megapixels)
    workers = {}
    with tempfile.TemporaryDirectory(prefix="bench-observe-") as tmp:
        try:
            for case in CASES:
                env = worker_env(case, sink.url)
                workers[case] = [start_worker(runtime, Path(tmp), env) for runtime in ("python", "nodejs")]
            configs = {
                case: CoordinatorConfig(workers=tuple(w.url for w in pair), source="bench")
                for case, pair in workers.items()
            }
            for case in CASES:  # one warm-up each, not timed
                one_run(case, jpeg, configs[case], sink.url)
            samples = {case: [] for case in CASES}
            for _ in range(args.runs):
                for case in CASES:
                    samples[case].append(one_run(case, jpeg, configs[case], sink.url))
        finally:
            for pair in workers.values():
                for worker in pair:
                    worker.stop()
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            sink.close()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; the OTLP sink took {sink.exports} exports")
    if not sink.exports:
        print("error: tracing was on but nothing reached the OTLP sink", file=sys.stderr)
        return 1
    print_table(samples, args.runs, args.megapixels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
