"""The long forms of the reliability suites, on real local workers, as one table.

    python -m scripts.soak                 # ~1000 fuzz cases per runtime, 100 jobs, every fault
    python -m scripts.soak --fuzz-cases 200 --jobs 50      # shorter
    python -m scripts.soak --only hostile                  # issue 11's slow attacks, ~5 min

Runs the same functions as tests/reliability/test_fuzz.py, test_load.py, test_faults.py and
test_shutdown.py with bigger budgets, then prints: cases fuzzed per runtime and 5xx seen; jobs
under load (completed, failed cleanly, lost); each fault and its outcome; each hostile-client
attack (scripts/testkit/hostile_soak.py) with /healthz latency under it; peak RSS per worker.
Loopback only. Exit 0 when every row passed, 1 otherwise (the table says which and why).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from scripts.testkit.procs import RUNTIMES, start_worker


class Fleet:
    """Workers this run started; all stopped at the end, whatever happens."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started = []

    def start(self, runtime: str, env: dict | None = None, label: str = ""):
        worker = start_worker(runtime, self.tmp / f"{label or runtime}-{len(self.started)}", env)
        worker.runtime, worker.label = runtime, label or runtime
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            try:
                worker.signal(signal.SIGCONT)
                worker.stop()
            except Exception:
                pass


def fuzz_rows(fleet: Fleet, cases: int, budget: float, bitflips: int, seed: int, rss: dict) -> list:
    from scripts.testkit.fuzz import LYING_HEADER_BUGS, broken_images, fuzz_contract, fuzz_decoders, lying_headers
    from scripts.testkit.load import peak_rss_mb

    rows = []
    for runtime in RUNTIMES:
        worker = fleet.start(runtime, label=f"fuzz-{runtime}")
        started = time.monotonic()
        stats = fuzz_contract(worker.url, cases, budget, seed=seed)
        alive = worker.proc.poll() is None
        ok = (
            stats.server_errors == 0
            and stats.transport_errors == 0
            and not stats.failures
            and alive
            and stats.cases >= min(cases, 1000) * 0.9
        )
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(stats.by_status.items()))
        rows.append(
            (
                "fuzz",
                f"contract, worker-{runtime}",
                f"{stats.cases} cases in {time.monotonic() - started:.0f}s ({statuses}); "
                f"5xx {stats.server_errors}; dropped {stats.transport_errors}; "
                f"nonconforming {len(stats.failures)}" + ("" if alive else "; WORKER DIED"),
                ok,
                stats.failures[:3],
            )
        )
        decoder_cases = list(lying_headers()) + list(broken_images(bitflips, seed=seed))
        stats = fuzz_decoders(worker.url, decoder_cases)
        alive = worker.proc.poll() is None
        known = [
            name
            for (bug_runtime, name) in LYING_HEADER_BUGS
            if bug_runtime == runtime and any(failure.startswith(f"{name}:") for failure in stats.failures)
        ]
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(stats.by_status.items()))
        rows.append(
            (
                "fuzz",
                f"decoders, worker-{runtime}",
                f"{stats.cases} broken/lying files ({statuses}); 5xx {stats.server_errors}; "
                f"hangs/drops {stats.transport_errors}; unexpected {len(stats.failures)}"
                + (f" [known bugs: {', '.join(known)}]" if known else ""),
                not stats.failures and alive,
                stats.failures[:3],
            )
        )
        rss[worker.label] = peak_rss_mb(worker.pid)
    return rows


def load_rows(fleet: Fleet, jobs: int, threads: int, seed: int, rss: dict) -> list:
    from scripts.testkit.load import busy_responses_in_log, peak_rss_mb, run_load

    env = {"WORKER_MAX_INFLIGHT": "1"}
    workers = [fleet.start(runtime, env, label=f"load-{runtime}") for runtime in RUNTIMES]
    outcome = run_load([w.url for w in workers], jobs=jobs, threads=threads, seed=seed)
    busy_logged = sum(busy_responses_in_log(w.log_text()) for w in workers)
    for worker in workers:
        rss[worker.label] = peak_rss_mb(worker.pid)
    ok = outcome.lost == 0 and busy_logged > 0 and outcome.completed + outcome.failed_cleanly == jobs
    return [
        (
            "load",
            f"{jobs} jobs x 4 strips, {threads} threads, MAX_INFLIGHT=1",
            f"completed {outcome.completed}; failed cleanly {outcome.failed_cleanly} (retry fixed); "
            f"lost {outcome.lost}; 503 busy: {busy_logged} in worker logs, {outcome.busy_retries} "
            f"met by the engine; {outcome.elapsed_s:.0f}s",
            ok,
            outcome.problems[:3],
        )
    ]


def fault_rows(fleet: Fleet) -> list:
    from scripts.testkit.faults import ALL_FAULTS, FAULT_BUGS, fault_drip

    ALL_FAULTS = {**ALL_FAULTS, "slow-drip reply": lambda p, n: fault_drip(p, n, bound_s=30)}

    rows = []
    pair = {}
    for name, fault in ALL_FAULTS.items():
        for runtime in RUNTIMES:  # a killed worker is replaced before the next fault
            if runtime not in pair or pair[runtime].proc.poll() is not None:
                pair[runtime] = fleet.start(runtime, label=f"faults-{runtime}")
        try:
            outcome = fault(pair["python"], pair["nodejs"])
            text, ok = f"{outcome.outcome} ({outcome.seconds:.1f}s)", outcome.ok
        except Exception as exc:
            text, ok = f"harness error: {type(exc).__name__}: {exc}", False
        finally:
            for worker in pair.values():
                worker.signal(signal.SIGCONT)
        if name in FAULT_BUGS and not ok:
            text += " [known bug]"
        rows.append(("fault", name, text, ok, []))
    rows.append(cli_blackhole_row(pair))
    rows.append(tbf_row())
    return rows


def tbf_row() -> tuple:
    from scripts.testkit import netns
    from scripts.testkit.faults import tbf_slow_link

    reason = netns.available()
    if reason:
        return ("fault", "slow link, tc tbf in a netns", f"not run: {reason}", False, [])
    with tempfile.TemporaryDirectory() as tmp:
        ok, what = tbf_slow_link(Path(tmp))
    return ("fault", "slow link, tc tbf in a netns", what, ok, [])


def cli_blackhole_row(pair: dict) -> tuple:
    """Every worker hangs: the CLI must fail with one line, exit 3, and write no file."""
    from scripts.testkit.faults import cli_through_faults

    with tempfile.TemporaryDirectory() as tmp:
        urls = [pair["python"].url, pair["nodejs"].url]
        done, seconds, leftovers = cli_through_faults(urls, "blackhole", Path(tmp))
    message = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
    ok = done.returncode == 3 and not leftovers and "Traceback" not in done.stderr
    return (
        "fault",
        "every worker hangs (CLI)",
        f"exit {done.returncode} in {seconds:.1f}s, files left: {leftovers or 'none'}; {message[:90]}",
        ok,
        [],
    )


def shutdown_rows(fleet: Fleet) -> list:
    from scripts.testkit.shutdown import GRACE_SECONDS, sigterm_in_flight

    rows = []
    for runtime in RUNTIMES:
        worker = fleet.start(runtime, {"WORKER_GRACE_SECONDS": str(GRACE_SECONDS)}, label=f"sigterm-{runtime}")
        ok, what = sigterm_in_flight(worker, runtime)
        rows.append(("fault", f"SIGTERM mid-request, worker-{runtime}", what, ok, []))
    return rows


def hostile_rows(fleet: Fleet) -> list:
    """Issue 11's attacks that take time, each bounded (about 20-30 s), per runtime."""
    from scripts.testkit import hostile_soak as attack

    open_attacks = [
        attack.idle_connections,
        attack.truncated_multiparts,
        lambda w: attack.scan_jpegs(w, 100),
        lambda w: attack.scan_jpegs(w, 127),
    ]
    token_attacks = [
        lambda w: attack.slow_bodies(w, authorised=False),
        lambda w: attack.slow_bodies(w, authorised=True),
        attack.long_auth_flood,
        attack.refused_push,
    ]
    rows = []
    for runtime in RUNTIMES:
        for env, attacks, kind in ((None, open_attacks, "open"), (attack.TOKEN_ENV, token_attacks, "token")):
            worker = None
            for run in attacks:
                if worker is None or worker.proc.poll() is not None:  # a killed worker is replaced
                    worker = fleet.start(runtime, env, label=f"hostile-{kind}-{runtime}")
                try:
                    subject, figures, ok = run(worker)
                except Exception as exc:
                    subject, figures, ok = getattr(run, "__name__", "attack"), f"harness error: {exc}", False
                rows.append(("hostile", f"{subject}, worker-{runtime}", figures, ok, []))
    return rows


def print_table(rows: list, rss: dict, header: str) -> None:
    rows = rows + [
        ("rss", f"peak RSS {label}", f"{mb:.0f} MB (VmHWM)", mb > 0, []) for label, mb in sorted(rss.items())
    ]
    widths = (7, max(len(r[1]) for r in rows), 6)
    print(header)
    line = f"{'area':<{widths[0]}}  {'subject':<{widths[1]}}  {'result':<{widths[2]}}  figures"
    print(line)
    print("-" * min(160, len(line) + 80))
    for area, subject, figures, ok, problems in rows:
        print(f"{area:<{widths[0]}}  {subject:<{widths[1]}}  {'PASS' if ok else 'FAIL':<{widths[2]}}  {figures}")
        for problem in problems:
            print(f"{'':<{widths[0] + widths[1] + widths[2] + 6}}  - {problem[:150]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fuzz-cases", type=int, default=1000, help="contract cases per runtime (1000)")
    parser.add_argument("--fuzz-budget", type=float, default=150, help="seconds per runtime for them (150)")
    parser.add_argument("--bitflips", type=int, default=40, help="bit-flipped files per format (40)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs under load (100)")
    parser.add_argument("--threads", type=int, default=10, help="client threads (10)")
    parser.add_argument("--seed", type=int, default=20261128, help="seed for every generator")
    parser.add_argument("--only", choices=("fuzz", "load", "faults", "hostile"), help="run one part")
    args = parser.parse_args(argv)
    for name in ("fuzz_cases", "jobs", "threads", "bitflips"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    started = time.monotonic()
    rows: list = []
    rss: dict = {}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            if args.only in (None, "fuzz"):
                rows += fuzz_rows(fleet, args.fuzz_cases, args.fuzz_budget, args.bitflips, args.seed, rss)
            if args.only in (None, "load"):
                rows += load_rows(fleet, args.jobs, args.threads, args.seed, rss)
            if args.only in (None, "faults"):
                rows += fault_rows(fleet)
                rows += shutdown_rows(fleet)
            if args.only in (None, "hostile"):
                rows += hostile_rows(fleet)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except RuntimeError as exc:  # a worker that does not start: one line, not a traceback
            print(f"error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
            return 1
        finally:
            fleet.stop_all()
    print_table(
        rows,
        rss,
        f"Reliability soak: seed {args.seed}, {time.monotonic() - started:.0f}s, loopback workers started by this run",
    )
    failed = [row for row in rows if not row[3]]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
