"""The WAN harness of scripts/bench_wan.py: the namespace link is built as described, carries
traffic through the relay, and is always removed (also after a failed build, and when a
previous run died). Needs root and iproute2; no timing assertions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts import wan
from scripts.testkit.procs import ROOT
from tests.support.ci import skip_or_fail


@pytest.fixture(autouse=True)
def needs_namespaces():
    reason = wan.unavailable_reason()
    if reason:
        skip_or_fail(f"WAN harness {reason}")


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def test_link_is_built_carries_traffic_and_is_removed():
    with wan.WanLink(rate_mbit=20, delay_ms=5) as link:
        assert link.name in namespaces()
        qdisc_host = subprocess.run(["tc", "qdisc", "show", "dev", link.host_if], capture_output=True, text=True).stdout
        qdisc_ns = subprocess.run(
            ["tc", "-n", link.name, "qdisc", "show", "dev", link.ns_if], capture_output=True, text=True
        ).stdout
        assert "tbf" in qdisc_host and "rate 20Mbit" in qdisc_host
        assert "tbf" in qdisc_ns and "rate 20Mbit" in qdisc_ns
        routes = subprocess.run(["ip", "-n", link.name, "route"], capture_output=True, text=True).stdout
        assert routes.split() and "default" not in routes  # only the /30: nothing else is reachable
        link.spawn([sys.executable, "-m", "scripts.wan", "probe-server", "--port", "15009"], cwd=ROOT)
        link.wait_inner(15009)
        link.start_relay({5009: 15009})
        measured = wan.measure_link(link.ns_address, 5009, megabytes=0.5, pings=2)
        assert measured.rtt_ms > 0 and measured.upload_mbit > 0 and measured.download_mbit > 0
        sent, received = link.wire_bytes()
        assert sent > 500_000 and received > 500_000  # the bytes crossed the veth pair
        host_if = link.host_if
    assert link.name not in namespaces()
    assert not link_exists(host_if)


def test_a_failed_build_leaves_nothing_behind(monkeypatch):
    real_run = wan.run

    def tc_fails(*command, check=True):  # the pair and addresses exist when tc runs
        if command[0] == "tc":
            raise subprocess.CalledProcessError(2, command, "", "RTNETLINK answers: Invalid argument")
        return real_run(*command, check=check)

    monkeypatch.setattr(wan, "run", tc_fails)
    link = wan.WanLink()
    with pytest.raises(subprocess.CalledProcessError):
        link.__enter__()
    assert link.name not in namespaces()
    assert not link_exists(link.host_if)


def test_stale_namespaces_of_dead_runs_are_removed():
    dead = f"{wan.PREFIX}{4_000_000 + 7}"  # above any pid this machine hands out
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in wan.cleanup_stale()
        assert dead not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)


def test_relay_route_syntax():
    assert wan.parse_route("10.0.0.2:5001=127.0.0.1:15001") == (("10.0.0.2", 5001), ("127.0.0.1", 15001))
    with pytest.raises(SystemExit):
        wan.main(["relay", "--listen", "nonsense"])
