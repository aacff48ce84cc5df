"""Worker pools (workerPools: true) under Pulumi's mocks: groups, templates, policies, invariants.

The moto half (real Auto Scaling API, groups made from these same args) is in
tests/test_fleet_pools.py's neighbour section below, `test_moto_*`.
"""

from __future__ import annotations

import base64

import pulumi
import pytest

from infra import pool as pool_module
from infra.config import ConfigError, parse_settings
from tests.infra_harness import MOCK_SUBNETS, MOCK_TOKEN, PROJECT, REGION, STACK, run_program

CLIENT = "198.51.100.7/32"
BASE = {"clientCidr": CLIENT, "aws:region": REGION}
POOLED = {**BASE, "workerPools": "true"}
BIG = {
    **POOLED,
    "pythonPoolMin": "3",
    "pythonPoolDesired": "3",
    "pythonPoolMax": "6",
    "nodejsPoolMin": "3",
    "nodejsPoolDesired": "4",
    "nodejsPoolMax": "6",
}
INSTANCE = "aws:ec2/instance:Instance"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
POLICY = "aws:autoscaling/policy:Policy"


@pytest.fixture(scope="module")
def pooled_run():
    return run_program(POOLED)


@pytest.fixture(scope="module")
def big_run():
    return run_program(BIG)


def test_workerpools_false_keeps_the_fixed_shape_exactly():
    default, explicit = run_program(BASE), run_program({**BASE, "workerPools": "false"})
    assert explicit.types() == default.types()
    assert default.types()[INSTANCE] == 2
    assert not default.of_type(GROUP) and not default.of_type(TEMPLATE)
    assert set(explicit.outputs) == set(default.outputs)  # mock IPs follow registration order
    assert [w["name"] for w in explicit.outputs["workers"]] == [w["name"] for w in default.outputs["workers"]]
    assert "pools" not in default.outputs and len(default.outputs["workers"]) == 2


def test_default_pools_are_two_groups_of_one_t2_micro(pooled_run):
    assert not pooled_run.of_type(INSTANCE)
    groups = pooled_run.of_type(GROUP)
    assert sorted(g.name for g in groups) == ["worker-nodejs-group", "worker-python-group"]
    for group in groups:
        assert (group.inputs["minSize"], group.inputs["maxSize"], group.inputs["desiredCapacity"]) == (1, 1, 1)
        assert group.inputs["healthCheckType"] == "EC2"
        assert group.inputs["healthCheckGracePeriod"] == pool_module.BOOT_GRACE_SECONDS
        assert group.inputs["vpcZoneIdentifiers"] == list(MOCK_SUBNETS)
    assert {t.inputs["instanceType"] for t in pooled_run.of_type(TEMPLATE)} == {"t2.micro"}
    assert not pooled_run.of_type(POLICY)  # min == max: nothing to scale


def test_pooled_exports_name_the_groups_not_addresses(pooled_run):
    outputs = pooled_run.outputs
    assert outputs["workers"] == [] and outputs["python_worker_url"] is None
    pools = {p["role"]: p for p in outputs["pools"]}
    assert pools["worker-python"]["name"] == "worker-python-group-0001"
    assert pools["worker-python"]["port"] == 5001 and pools["worker-nodejs"]["port"] == 5002
    assert pools["worker-nodejs"]["runtime"] == "nodejs"
    assert outputs["worker_token"] == MOCK_TOKEN and pooled_run.secret_outputs == {"worker_token"}


def test_a_3_to_6_config_gives_sized_groups_current_templates_and_policies(big_run):
    groups = {g.name: g.inputs for g in big_run.of_type(GROUP)}
    assert (
        groups["worker-python-group"]["minSize"],
        groups["worker-python-group"]["maxSize"],
        groups["worker-python-group"]["desiredCapacity"],
    ) == (3, 6, 3)
    assert groups["worker-nodejs-group"]["desiredCapacity"] == 4
    for group in groups.values():
        template = group["launchTemplate"]
        assert template["id"].endswith("-template-id") and template["version"] == "1"
        refresh = group["instanceRefresh"]
        assert refresh["strategy"] == "Rolling"
        prefs = refresh["preferences"]
        assert prefs["minHealthyPercentage"] == 100 and prefs["autoRollback"] is True
        assert prefs["checkpointPercentages"] == [50, 100]
    policies = big_run.of_type(POLICY)
    assert sorted(p.inputs["autoscalingGroupName"] for p in policies) == [
        "worker-nodejs-group-0001",
        "worker-python-group-0001",
    ]
    for policy in policies:
        tracking = policy.inputs["targetTrackingConfiguration"]
        assert tracking["predefinedMetricSpecification"]["predefinedMetricType"] == "ASGAverageNetworkIn"
        assert tracking["targetValue"] == 300e6


def test_a_pool_with_max_zero_leaves_its_runtime_out():
    run = run_program({**POOLED, "pythonPoolMin": "0", "pythonPoolDesired": "0", "pythonPoolMax": "0"})
    assert [g.name for g in run.of_type(GROUP)] == ["worker-nodejs-group"]


# ---------------------------------------------------------------- security invariants over templates


@pytest.mark.parametrize("config", [POOLED, BIG], ids=["default-pools", "3..6"])
def test_every_template_keeps_the_security_invariants(config):
    run = run_program(config)
    groups = run.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert len(groups) == 1
    for template in run.of_type(TEMPLATE):
        inputs = template.inputs
        role = inputs["tags"]["Role"]
        assert inputs["metadataOptions"] == {
            "httpTokens": "required",
            "httpPutResponseHopLimit": 1,
            "httpEndpoint": "enabled",
        }
        (device,) = inputs["blockDeviceMappings"]
        assert device["ebs"]["encrypted"] == "true" and device["ebs"]["volumeType"] == "gp3"
        (nic,) = inputs["networkInterfaces"]
        assert nic["securityGroups"] == ["workers-sg-id"]
        assert inputs["iamInstanceProfile"] == {"name": f"releases-{role}-host-profile-0001"}
        assert inputs["creditSpecification"] == {"cpuCredits": "standard"}
        for spec in inputs["tagSpecifications"]:
            assert spec["tags"] == {"Project": PROJECT, "Stack": STACK, "Role": role, "Name": f"{role}-pool"}


def test_templates_carry_the_same_user_data_as_fixed_instances(pooled_run):
    fixed = {i.inputs["tags"]["Role"]: i.inputs["userData"] for i in run_program(BASE).of_type(INSTANCE)}
    for template in pooled_run.of_type(TEMPLATE):
        encoded = template.inputs["userData"]
        encoded = encoded["value"] if isinstance(encoded, dict) else encoded
        text = base64.b64decode(encoded).decode()
        plain = fixed[template.inputs["tags"]["Role"]]
        assert text == (plain["value"] if isinstance(plain, dict) else plain)


@pulumi.runtime.test
def test_template_user_data_stays_secret():
    pools = run_program(POOLED).namespace["pools"]

    def check(flags):
        assert flags == [True, True]

    return pulumi.Output.all(*[p.template.user_data.is_secret() for p in pools]).apply(check)


def test_a_new_release_changes_the_template_user_data(monkeypatch):
    """New worker files -> new user-data -> a new template version, which the group's refresh rolls."""
    before = {t.name: t.inputs["userData"] for t in run_program(POOLED).of_type(TEMPLATE)}
    import infra.bundle

    original = infra.bundle.bundle_files
    monkeypatch.setattr(
        infra.bundle, "bundle_files", lambda role, *a, **k: {**original(role, *a, **k), "CHANGED": b"new release"}
    )
    after = {t.name: t.inputs["userData"] for t in run_program(POOLED).of_type(TEMPLATE)}
    assert set(before) == set(after) and all(before[n] != after[n] for n in before)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"pythonPoolMin": "2", "pythonPoolDesired": "1", "pythonPoolMax": "3"}, "pythonPoolMin <= pythonPoolDesired"),
        ({"nodejsPoolMax": "11"}, "nodejsPoolMax must be between 0 and 10"),
        ({"workerPools": "yes"}, "workerPools must be true or false"),
        (
            {
                "pythonPoolMax": "0",
                "pythonPoolMin": "0",
                "pythonPoolDesired": "0",
                "nodejsPoolMax": "0",
                "nodejsPoolMin": "0",
                "nodejsPoolDesired": "0",
            },
            "both 0",
        ),
    ],
)
def test_bad_pool_settings_are_refused_with_one_line(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {"clientCidr": CLIENT, "workerPools": "true", **raw}, project=PROJECT, stack=STACK, region=REGION
        )
    assert message in str(caught.value) and "\n" not in str(caught.value)
