"""Facts read from inside a booted container: cloud-init's result, the service, its logs, timings."""

from __future__ import annotations

import json
import re

from scripts.boot.machine import Container

# Trace lines of the runcmd script (set -x) that start each step of the timing table.
STEP_MARKERS = (
    ("fetch", "+ /usr/local/sbin/fetch-worker-release"),
    ("secrets", "+ /usr/local/sbin/fetch-worker-secrets"),
    ("runtime (venv / node)", ("+ python3 -m venv", "+ curl ")),
    ("dependencies", ("/bin/pip install", "npm ci")),
    ("enable + start", "+ systemctl daemon-reload"),
)


def cloud_init_result(box: Container, timeout: float) -> dict:
    """Waits for cloud-init to finish; returns its status line and result.json's errors."""
    # `cloud-init status --wait` returns at the first error of an early stage; result.json is
    # written when the last stage (final) ends, failed or not.
    waited = box.sh(
        f"timeout {int(timeout)} sh -c 'until [ -e /run/cloud-init/result.json ]; do sleep 1; done'; cloud-init status",
        timeout=timeout + 30,
    )
    result = box.sh("cat /run/cloud-init/result.json")
    errors = json.loads(result.stdout)["v1"]["errors"] if result.returncode == 0 else ["no result.json"]
    tail = box.sh(
        "grep -E '^(E|Err|W):' /var/log/cloud-init-output.log | tail -n 10; "
        "tail -n 25 /var/log/cloud-init-output.log; grep -E 'WARNING|ERROR' /var/log/cloud-init.log "
        "| tail -n 10"
    ).stdout
    output = box.sh("cat /var/log/cloud-init-output.log").stdout
    return {"status": waited.stdout.strip(), "errors": errors, "log": tail, "output": output}


def service_facts(box: Container, role: str) -> dict:
    show = box.sh(
        f"systemctl show {role} -p ActiveState -p UnitFileState -p MainPID -p User "
        f"-p ProtectSystem -p ProtectHome -p PrivateTmp -p PrivateDevices -p NoNewPrivileges"
    )
    facts = dict(line.split("=", 1) for line in show.stdout.splitlines() if "=" in line)
    pid = facts.get("MainPID", "0")
    status = box.sh(f"grep -E '^(Uid|CapEff|CapPrm|NoNewPrivs):' /proc/{pid}/status") if pid != "0" else None
    if status is not None:
        facts.update({k: v.split()[0] for k, v in (line.split(":", 1) for line in status.stdout.splitlines())})
    facts["worker_uid"] = box.sh("id -u worker").stdout.strip()
    return facts


def env_file_facts(box: Container, role: str) -> dict:
    stat = box.sh(f"stat -c '%a %U:%G' /etc/{role}/env").stdout.strip()
    as_worker = box.sh(f"runuser -u worker -- cat /etc/{role}/env")
    return {"mode_owner": stat, "worker_can_read": as_worker.returncode == 0}


def secrets_facts(box: Container, role: str) -> dict:
    """Mode and owner of the secrets folder and each file in it; who may read the token."""
    folder = f"/etc/{role}/secrets"
    listing = box.sh(f"stat -c '%n %a %U:%G' {folder} {folder}/*").stdout.split("\n")
    facts = {line.split()[0].rsplit("/", 1)[-1]: " ".join(line.split()[1:]) for line in listing if line}
    facts["worker_reads_token"] = box.sh(f"runuser -u worker -- cat {folder}/worker-token").returncode == 0
    facts["login_user_reads_token"] = box.sh(f"runuser -u debian -- cat {folder}/worker-token").returncode == 0
    return facts


def unit_state(box: Container, unit: str) -> tuple[str, str]:
    show = box.sh(f"systemctl show {unit} -p ActiveState -p UnitFileState").stdout
    facts = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    return facts.get("ActiveState", ""), facts.get("UnitFileState", "")


def exposure(box: Container, role: str) -> float | None:
    out = box.sh(f"systemd-analyze security {role} --no-pager 2>&1 | tail -1").stdout
    match = re.search(r"exposure level for \S+: (\d+\.\d+)", out)
    return float(match.group(1)) if match else None


def json_log_lines(box: Container, role: str) -> list[dict]:
    out = box.sh(f"journalctl -u {role} -o cat --no-pager -n 200").stdout
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return [line for line in lines if isinstance(line, dict)]


def step_times(box: Container, healthy_at: float | None) -> dict[str, float]:
    """Seconds per step: apt from cloud-config's unit, the rest from runcmd's set -x trace;
    the last step ends at the first 200 from /healthz (same clock: the container shares it)."""
    times: dict[str, float] = {}
    journal = box.sh("journalctl -u cloud-final -o short-unix --no-pager").stdout.splitlines()
    stamped = [line for line in journal if re.match(r"^\d+\.\d+ ", line)]
    first_trace = next((float(line.split()[0]) for line in stamped if " + " in line), None)
    if stamped and first_trace:
        # Ubuntu and Debian run the packages module in cloud-final, just before runcmd.
        times["apt update + packages"] = first_trace - float(stamped[0].split()[0])
    starts = []
    for name, marker in STEP_MARKERS:
        markers = marker if isinstance(marker, tuple) else (marker,)
        stamp = next(
            (float(line.split()[0]) for line in journal if any(m in line for m in markers) and " + " in line), None
        )
        if stamp is not None:
            starts.append((name, stamp))
    starts.sort(key=lambda item: item[1])  # in the order runcmd ran them
    ends = [stamp for _, stamp in starts[1:]] + [healthy_at or _last_stamp(journal)]
    for (name, start), end in zip(starts, ends, strict=True):
        times[name] = end - start
    return times


def _last_stamp(journal: list[str]) -> float:
    stamps = [float(line.split()[0]) for line in journal if re.match(r"^\d+\.\d+ ", line)]
    return stamps[-1] if stamps else 0.0


def fleet_boot_verdict(box: Container):
    """What `fleet status`/`wait` would report: the fleet's own commands and parsers (scripts.fleet.boot),
    run as an ordinary login user (the image's default `debian`, no sudo), as over SSH."""
    from scripts.fleet import boot

    as_user = "runuser -u debian -- {}"
    verdict = boot.from_json(box.sh(as_user.format(boot.JSON_COMMAND)).stdout)
    return verdict or boot.from_long(box.sh(as_user.format(boot.LONG_COMMAND)).stdout)
