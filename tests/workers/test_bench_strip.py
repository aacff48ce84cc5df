"""`scripts/bench_strip.py` (make bench's per-strip overhead table) against real workers and real
echo servers, on a tiny strip: every row is printed with figures that add up, and a refused
request ends the bench with one line. No timing is asserted; the bench's figures are its own."""

from __future__ import annotations

import re

import pytest

from scripts import bench_strip

ROW = re.compile(r"^(\S+)\s+(\S+)\s+([\d.]+)\s+(\d+)\s+(\d+)-(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)")


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    return {(match[1], match[2]): list(match.groups()) for line in text.splitlines() if (match := ROW.match(line))}


def test_the_table_has_every_worker_op_and_both_echo_floors(capsys):
    assert bench_strip.main(["--runs", "2", "--width", "64", "--height", "48", "--ops", "grayscale,blur"]) == 0
    rows = table_rows(capsys.readouterr().out)
    expected = {(f"worker-{runtime}", op) for runtime in ("python", "nodejs") for op in ("grayscale", "blur")}
    assert set(rows) == expected | {("python-echo", "(bytes)"), ("node-echo", "(bytes)")}
    for (service, _), row in rows.items():
        worker, wall, low, high = float(row[2]), int(row[3]), int(row[4]), int(row[5])
        assert low <= wall <= high
        if "echo" in service:
            assert worker == 0 and row[6] == "-"
            continue
        assert worker > 0 and wall + 1 >= worker  # the worker's own time is inside the wall time
        ratio, floor = float(row[6].rstrip("x")), float(row[10].rstrip("x"))
        assert ratio > 0 and floor >= 1


def test_a_refused_request_ends_the_bench_with_one_line():
    with pytest.raises(SystemExit) as stop:
        bench_strip.main(["--runs", "1", "--width", "8", "--height", "8", "--ops", "no-such-op"])
    message = str(stop.value)
    assert message.startswith("error: http://127.0.0.1:") and "no-such-op: HTTP 400" in message
    assert "\n" not in message


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--runs", "101"], ["--width", "0"], ["--height", "20001"]])
def test_bad_arguments_are_refused_before_any_worker_starts(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        bench_strip.main(argv)
    assert stop.value.code == 2
    assert "--runs must be 1-100" in capsys.readouterr().err
