"""The policy pack (infra/policy) against the real program's resources, two ways.

Directly: each policy's validate() on the inputs Pulumi's mocks record, deserialized the way
the analyzer does (in the pack's own venv: tests/support/policy_pack.py says why). Over gRPC:
the pack started as the engine starts it (`python -u -m pulumi.policy <engine> <pack>`; it
prints its port), configured with Configure and asked with Analyze per resource, so a policy that breaks
only on the engine's wire format (Struct, floats, secrets) is caught. Each deliberately broken
resource must fail exactly the matching policies, both ways.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from infra.userdata import packed
from tests.support.infra_harness import REGION, is_secret_input, run_program
from tests.support.policy_pack import start_pack, validate_directly

CLIENT = "198.51.100.7/32"
ADMIN = "192.0.2.0/28"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ5bGVldC10ZXN0LWtleS1mb3ItdW5pdC10ZXN0cw== ops@example"
STACK_CONFIG = {"clientCidr": CLIENT, "adminCidr": ADMIN, "sshPublicKey": SSH_KEY, "aws:region": REGION}
TAGS = {"Project": "p", "Stack": "s"}
PACK_CONFIG = {"clientCidr": CLIENT, "adminCidr": ADMIN}
CONFIGURED = ("ingress-within-cidrs", "ssh-only-from-admin", "egress-limited")
POLICY_NAMES = (
    "imdsv2-hop-limit-1",
    "encrypted-volumes",
    *CONFIGURED,
    "no-secrets-in-user-data",
    "tls-on-worker-ports",
    "required-tags",
)
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
TOKEN = "Xq7vLr2NcT9wHs4KpB6dFy1MzJ8gUe3Ra5WkQn0t"


@pytest.fixture(scope="module")
def resources() -> dict[str, tuple[str, dict]]:
    """name -> (type, raw inputs) for the fixed fleet and the pooled fleet, SSH open to ADMIN."""
    found = {}
    for config in (STACK_CONFIG, {**STACK_CONFIG, "workerPools": "true"}):
        found |= {r.name: (r.typ, r.inputs) for r in run_program(config).mocks.resources}
    assert {"worker-python-0-instance", "worker-python-template", "workers-ssh-in", "workers-egress-443"} <= set(found)
    return found


def direct(*resources: tuple[str, dict], config: dict = PACK_CONFIG) -> list[dict[str, list[str]]]:
    return validate_directly(list(resources), config)


@pytest.fixture(scope="module")
def analyzer():
    """The pack served as the engine serves it, configured as --policy-pack-config would; yields the stub."""
    proc, port = start_pack()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = analyzer_pb2_grpc.AnalyzerStub(channel)
        properties = json_format.ParseDict(PACK_CONFIG, struct_pb2.Struct())
        policy_config = {
            name: analyzer_pb2.PolicyConfig(enforcementLevel=analyzer_pb2.MANDATORY, properties=properties)
            for name in CONFIGURED
        }
        stub.Configure(analyzer_pb2.ConfigureAnalyzerRequest(policyConfig=policy_config), timeout=10)
        yield stub
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def over_grpc(stub, typ: str, raw: dict) -> dict[str, list[str]]:
    request = analyzer_pb2.AnalyzeRequest(
        type=typ, properties=json_format.ParseDict(raw, struct_pb2.Struct()), urn=f"urn:{typ}", name="r"
    )
    violations: dict[str, list[str]] = {}
    for diagnostic in stub.Analyze(request, timeout=10).diagnostics:
        assert diagnostic.enforcementLevel == analyzer_pb2.MANDATORY, diagnostic
        violations.setdefault(diagnostic.policyName, []).append(diagnostic.message)
    return violations


def test_the_pack_serves_every_policy_over_grpc(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=10)
    assert sorted(p.name for p in info.policies) == sorted(POLICY_NAMES)


def test_the_real_program_passes_every_policy_directly(resources):
    names = sorted(resources)
    results = direct(*(resources[name] for name in names))
    assert {name: v for name, v in zip(names, results, strict=True) if v} == {}


def test_the_real_program_passes_every_policy_over_grpc(resources, analyzer):
    assert {name: v for name, (typ, raw) in resources.items() if (v := over_grpc(analyzer, typ, raw))} == {}


def _set(path: str, value) -> Callable[[dict], None]:
    """A mutation setting a dotted path (digits index lists) in the raw inputs."""

    def mutate(raw: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = raw
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _edit_user_data(edit: Callable[[str], str], encode: bool) -> Callable[[dict], None]:
    """Applies `edit` to the user-data text (base64 again for a launch template). It holds no
    secret, so the engine gets it as plain text, not a secret."""

    def mutate(raw: dict) -> None:
        assert not is_secret_input(raw["userData"])
        plain = base64.b64decode(raw["userData"]).decode() if encode else raw["userData"]
        changed = edit(plain)
        assert changed != plain
        raw["userData"] = base64.b64encode(changed.encode()).decode() if encode else changed

    return mutate


def _user_data(extra: str, encode: bool) -> Callable[[dict], None]:
    """Appends `extra` as YAML comment lines: the document stays valid cloud-config."""
    comment = "".join(f"# {line}\n" for line in extra.splitlines())
    return _edit_user_data(lambda text: text + comment, encode)


def _packed_file(content: str, encode: bool) -> Callable[[dict], None]:
    """Adds a write_files entry the way infra packs its scripts (gz+b64), so only decoding finds it."""

    def edit(text: str) -> str:
        document = yaml.safe_load(text)
        document["write_files"].append({"path": "/etc/extra.conf", "encoding": "gz+b64", "content": packed(content)})
        return "#cloud-config\n" + yaml.safe_dump(document)

    return _edit_user_data(edit, encode)


def _without_tls(role: str, encode: bool) -> Callable[[dict], None]:
    """What workerTls: false renders: the env file without the certificate and key."""
    lines = f"WORKER_TLS_CERT=/etc/{role}/secrets/tls.crt\n    WORKER_TLS_KEY=/etc/{role}/secrets/tls.key\n    "
    return _edit_user_data(lambda text: text.replace(lines, ""), encode)


BROKEN = {
    "instance-imds-optional": (
        "worker-python-0-instance",
        _set("metadataOptions.httpTokens", "optional"),
        {"imdsv2-hop-limit-1"},
    ),
    "template-hop-limit-2": (
        "worker-python-template",
        _set("metadataOptions.httpPutResponseHopLimit", 2.0),
        {"imdsv2-hop-limit-1"},
    ),
    "instance-unencrypted-root": (
        "worker-nodejs-0-instance",
        _set("rootBlockDevice.encrypted", False),
        {"encrypted-volumes"},
    ),
    "template-unencrypted-volume": (
        "worker-nodejs-template",
        _set("blockDeviceMappings.0.ebs.encrypted", "false"),
        {"encrypted-volumes"},
    ),
    "ingress-anywhere": ("workers-worker-python-in", _set("cidrIpv4", "0.0.0.0/0"), {"ingress-within-cidrs"}),
    "ssh-from-client-cidr": ("workers-ssh-in", _set("cidrIpv4", CLIENT), {"ssh-only-from-admin"}),
    "ssh-anywhere": ("workers-ssh-in", _set("cidrIpv4", "0.0.0.0/0"), {"ingress-within-cidrs", "ssh-only-from-admin"}),
    "inline-ssh-anywhere": (
        "workers-sg",
        _set("ingress", [{"protocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrBlocks": ["0.0.0.0/0"]}]),
        {"ingress-within-cidrs", "ssh-only-from-admin"},
    ),
    "egress-all-ports": ("workers-egress-443", _set("ipProtocol", "-1"), {"egress-limited"}),
    "egress-port-range": ("workers-egress-80", _set("toPort", 65535.0), {"egress-limited"}),
    "instance-without-role-tag": (
        "worker-python-0-instance",
        _set("tags", {"Project": "p", "Stack": "s"}),
        {"required-tags"},
    ),
    "template-volume-tags-without-project": (
        "worker-python-template",
        _set("tagSpecifications.1.tags", {"Stack": "dev", "Role": "worker-python"}),
        {"required-tags"},
    ),
    "rule-without-stack-tag": ("workers-egress-80", _set("tags", {"Project": "p"}), {"required-tags"}),
    "group-without-role-tag": ("worker-nodejs-group", _set("tags", []), {"required-tags"}),
    "instance-user-data-aws-key": (
        "worker-python-0-instance",
        _user_data("AWS_KEY=AKIAABCDEFGHIJKLMNOP\n", False),
        {"no-secrets-in-user-data"},
    ),
    "template-user-data-private-key": (
        "worker-nodejs-template",
        _user_data(PRIVATE_KEY, True),
        {"no-secrets-in-user-data"},
    ),
    "instance-user-data-worker-token": (
        "worker-python-0-instance",
        _edit_user_data(
            lambda t: t.replace("WORKER_TOKEN_FILE=/etc/worker-python/secrets/worker-token", f"WORKER_TOKEN={TOKEN}"),
            False,
        ),
        {"no-secrets-in-user-data"},
    ),
    "instance-user-data-bearer-token": (
        "worker-nodejs-0-instance",
        _user_data(f"curl -H 'Authorization: Bearer {TOKEN}'", False),
        {"no-secrets-in-user-data"},
    ),
    "template-packed-file-token": (
        "worker-python-template",
        _packed_file(f"API_TOKEN={TOKEN}\n", True),
        {"no-secrets-in-user-data"},
    ),
    "instance-packed-file-private-key": (
        "worker-python-0-instance",
        _packed_file(PRIVATE_KEY, False),
        {"no-secrets-in-user-data"},
    ),
    "instance-plain-http": ("worker-python-0-instance", _without_tls("worker-python", False), {"tls-on-worker-ports"}),
    "template-plain-http": ("worker-nodejs-template", _without_tls("worker-nodejs", True), {"tls-on-worker-ports"}),
    "parameter-without-tags": ("secrets-worker-token", _set("tags", {}), {"required-tags"}),
}


def _broken(resources: dict, case: str) -> tuple[str, dict, set[str]]:
    name, mutate, expected = BROKEN[case]
    typ, raw = resources[name]
    raw = copy.deepcopy(raw)
    mutate(raw)
    return typ, raw, expected


def test_each_broken_resource_fails_its_policy_directly(resources):
    cases = sorted(BROKEN)
    broken = [_broken(resources, case) for case in cases]
    results = direct(*((typ, raw) for typ, raw, _ in broken))
    failed = {case: sorted(found) for case, found in zip(cases, results, strict=True)}
    assert failed == {case: sorted(expected) for case, (_, _, expected) in zip(cases, broken, strict=True)}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_resource_fails_its_policy_over_grpc(resources, analyzer, case):
    typ, raw, expected = _broken(resources, case)
    assert set(over_grpc(analyzer, typ, raw)) == expected


def test_without_pack_config_ssh_is_refused_and_ingress_capped_at_16():
    rule = {"cidrIpv4": "10.0.0.0/8", "ipProtocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "tags": TAGS}
    [found] = direct(("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", rule), config={})
    assert found == {
        "ingress-within-cidrs": ["ingress from 10.0.0.0/8 is wider than /16 (no clientCidr/adminCidr configured)"],
        "ssh-only-from-admin": ["SSH (port 22) is open to 10.0.0.0/8 but no adminCidr is configured"],
    }


@pytest.fixture(scope="module")
def plain_http_hosts() -> dict[str, tuple[str, dict]]:
    """The hosts of a workerTls: false stack, fixed and pooled."""
    found = {}
    for config in (STACK_CONFIG, {**STACK_CONFIG, "workerPools": "true"}):
        run = run_program({**config, "workerTls": "false"})
        found |= {r.name: (r.typ, r.inputs) for r in run.mocks.resources if r.typ.startswith("aws:ec2/")}
    hosts = {n: r for n, r in found.items() if n.endswith(("-instance", "-template"))}
    assert len(hosts) == 4
    return hosts


def test_a_plain_http_stack_fails_tls_on_worker_ports_both_ways(plain_http_hosts, analyzer):
    names = sorted(plain_http_hosts)
    results = direct(*(plain_http_hosts[name] for name in names))
    assert [sorted(found) for found in results] == [["tls-on-worker-ports"]] * len(names)
    for name in names:
        violations = over_grpc(analyzer, *plain_http_hosts[name])
        assert list(violations) == ["tls-on-worker-ports"], name
        assert "sets no WORKER_TLS_CERT or WORKER_TLS_KEY" in violations["tls-on-worker-ports"][0]


def test_a_worker_host_without_an_env_file_cannot_show_tls():
    typ, raw = (
        "aws:ec2/instance:Instance",
        {"userData": "#cloud-config\nruncmd: [true]\n", "tags": {"Role": "worker-x"}},
    )
    [found] = direct((typ, raw))
    assert found["tls-on-worker-ports"] == [
        "worker-x host: no worker env file (WORKER_PORT=) in its user-data, so TLS cannot be shown"
    ]
