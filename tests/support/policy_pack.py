"""The policy pack (infra/policy) runs in its own virtualenv, infra/policy/.venv (`make setup`):
pulumi-policy pins protobuf 5.29 and the workers' OpenTelemetry pins protobuf 6, so the two
cannot share .venv. Both ways of running it therefore go through that interpreter: policies
called directly (a short script reading JSON on stdin), or the pack served as the engine does.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.ci import skip_or_fail
from tests.support.infra_harness import INFRA_DIR

PACK_DIR = INFRA_DIR / "policy"
PACK_PYTHON = PACK_DIR / ".venv" / "bin" / "python"
# Run in PACK_DIR, so `policies` is the pack's own module. Reads {"config", "resources": [[type, inputs]]},
# prints one {policy: [messages]} per resource, inputs deserialized the way the analyzer does.
DIRECT = """
import json, sys
from pulumi_policy import ResourceValidationArgs
from pulumi_policy.deserialize import deserialize_properties
from policies import POLICIES
batch = json.load(sys.stdin)
results = []
for typ, raw in batch["resources"]:
    found = {}
    for policy in POLICIES:
        args = ResourceValidationArgs(typ, deserialize_properties(raw), "urn:" + typ, "r", None, None, batch["config"])
        policy.validate(args, lambda message, urn=None, name=policy.name: found.setdefault(name, []).append(message))
    results.append(found)
json.dump(results, sys.stdout)
"""


def require_pack() -> None:
    if not PACK_PYTHON.exists():
        skip_or_fail(f"{PACK_PYTHON} is missing: run `make setup`")


def validate_directly(resources: list[tuple[str, dict]], config: dict) -> list[dict[str, list[str]]]:
    require_pack()
    batch = json.dumps({"config": config, "resources": resources})
    done = subprocess.run(
        [str(PACK_PYTHON), "-c", DIRECT], cwd=PACK_DIR, input=batch, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start_pack() -> tuple[subprocess.Popen, int]:
    """The pack as the CLI's pulumi-analyzer-policy-python starts it: `<venv>/bin/python -u -m
    pulumi.policy <engine-address> <pack-dir>` (that runs the pack's __main__.py, whose
    PolicyPack serves the Analyzer and prints its port). No engine here: the address is unused."""
    require_pack()
    proc = subprocess.Popen(
        [str(PACK_PYTHON), "-u", "-m", "pulumi.policy", "127.0.0.1:9", str(PACK_DIR)],
        cwd=INFRA_DIR,  # the stack's folder, not the pack's: the pack must not depend on its cwd
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"the policy pack printed {line!r}, not its port")
    return proc, int(line)
