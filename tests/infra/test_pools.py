"""Worker pools (workerPools: true): first under Pulumi's mocks (groups, templates, policies,
invariants), then on a real moto server with groups made from the program's own WorkerPoolArgs,
discovered, scaled, healed and shown by the fleet tool (`python -m scripts.fleet`).

moto launches the groups' instances (tagged, with aws:autoscaling:groupName) and replaces a
terminated one, but does not apply a launch template's metadata options to its instances and
does not implement instance refreshes (500): the template's settings are checked on the template
moto stores, and `fleet rollout` against a scripted Auto Scaling client. Health probes of the
instances' (fake, public) addresses go through a loopback forward proxy (HTTP_PROXY) to real
local workers: no traffic leaves the host.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pulumi
import pytest

from infra import pool as pool_module
from infra.config import ConfigError, parse_settings
from infra.pool_spec import group_request, template_data
from scripts.fleet import errors
from scripts.fleet.errors import FleetError
from scripts.fleet.pools import rollout
from scripts.testkit.procs import free_port
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.infra_harness import MOCK_SUBNETS, MOCK_TOKEN, PROJECT, REGION, STACK, run_program
from tests.support.moto_server import aws_env, ubuntu_ami

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
def test_template_user_data_holds_no_secret_so_is_not_one():
    """No secret Output flows into it (infra/userdata.py renders parameter names only)."""
    pools = run_program(POOLED).namespace["pools"]

    def check(flags):
        assert flags == [False, False]

    return pulumi.Output.all(*[p.template.user_data.is_secret() for p in pools]).apply(check)


def test_pool_descriptors_name_the_scheme_of_their_urls():
    https = {p["role"]: p["scheme"] for p in run_program(POOLED).outputs["pools"]}
    http = {p["role"]: p["scheme"] for p in run_program({**POOLED, "workerTls": "false"}).outputs["pools"]}
    assert (set(https.values()), set(http.values())) == ({"https"}, {"http"})


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


# ---------------------------------------------------------------- a real moto server

fleet = functools.partial(run_fleet, timeout=90)
MOTO_BIG = {
    **POOLED,
    "pythonPoolMin": "3",
    "pythonPoolDesired": "3",
    "pythonPoolMax": "6",
    "nodejsPoolMin": "1",
    "nodejsPoolDesired": "2",
    "nodejsPoolMax": "4",
}


def _asg(moto):
    return boto3.client(
        "autoscaling",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_pools(moto, config: dict, tmp_path) -> dict:
    """Run the program under mocks, then create its pools on moto from the same WorkerPoolArgs."""
    moto.reset()
    run = run_program(config)
    ec2, asg = moto.ec2(), _asg(moto)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [
        s["SubnetId"]
        for s in ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
    ]
    group_id = ec2.create_security_group(GroupName="workers-sg", Description="w", VpcId=vpc)["GroupId"]
    user_data = {t.inputs["tags"]["Role"]: t.inputs["userData"] for t in run.of_type(TEMPLATE)}
    pools = []
    for pool in run.namespace["pools"]:
        args, role = pool.args, pool.role
        encoded = user_data[role]["value"] if isinstance(user_data[role], dict) else user_data[role]
        data = template_data(
            args,
            ami_id=ubuntu_ami(ec2),
            security_group_id=group_id,
            user_data=base64.b64decode(encoded).decode(),
            instance_profile=f"{role}-profile",
        )
        template = ec2.create_launch_template(LaunchTemplateName=f"{role}-template", LaunchTemplateData=data)[
            "LaunchTemplate"
        ]
        name = f"{STACK}-{role}"
        asg.create_auto_scaling_group(
            **group_request(args, name=name, template_id=template["LaunchTemplateId"], version="1", subnet_ids=subnets)
        )
        pools.append({**next(p for p in run.outputs["pools"] if p["role"] == role), "name": name})
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                "workers": [],
                "pools": pools,
                "worker_token": "t",
                "project": PROJECT,
                "stack": STACK,
                "region": "us-east-1",
                "ssh_user": "ubuntu",
            }
        )
    )
    return {"outputs": outputs, "ec2": ec2, "asg": asg, "pools": {p["role"]: p["name"] for p in pools}}


def _members(asg, name: str) -> list[str]:
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return sorted(i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService")


def test_groups_from_the_program_args_launch_tagged_instances(moto, tmp_path):
    made = create_pools(moto, MOTO_BIG, tmp_path)
    ec2, asg = made["ec2"], made["asg"]
    assert len(_members(asg, made["pools"]["worker-python"])) == 3
    assert len(_members(asg, made["pools"]["worker-nodejs"])) == 2
    reservations = ec2.describe_instances(
        Filters=[{"Name": "tag:Project", "Values": [PROJECT]}, {"Name": "tag:Stack", "Values": [STACK]}]
    )["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert len(instances) == 5
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["aws:autoscaling:groupName"] == made["pools"][tags["Role"]]
        assert tags["Name"] == f"{tags['Role']}-pool"
    for role in made["pools"]:
        (version,) = ec2.describe_launch_template_versions(LaunchTemplateName=f"{role}-template")[
            "LaunchTemplateVersions"
        ]
        data = version["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
        assert "#cloud-config" in base64.b64decode(data["UserData"]).decode()


def test_scale_out_and_in_and_refuse_outside_the_bounds(moto, tmp_path):
    made = create_pools(moto, MOTO_BIG, tmp_path)
    env, outputs, name = aws_env(moto.url), str(made["outputs"]), made["pools"]["worker-python"]
    result = fleet("scale", "worker-python", "5", "--outputs", outputs, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{name}: desired 5" in result.stdout
    assert len(_members(made["asg"], name)) == 5
    result = fleet("scale", name, "3", "--outputs", outputs, env=env)
    assert result.returncode == 0, result.stderr
    assert len(_members(made["asg"], name)) == 3
    assert_one_error_line(fleet("scale", name, "7", "--outputs", outputs, env=env), 2, "holds 3..6 instances")
    assert_one_error_line(fleet("scale", "nope", "1", "--outputs", outputs, env=env), 2, "no pool 'nope'")


def test_a_terminated_instance_is_replaced(moto, tmp_path):
    made = create_pools(moto, POOLED, tmp_path)
    name = made["pools"]["worker-nodejs"]
    (victim,) = _members(made["asg"], name)
    made["ec2"].terminate_instances(InstanceIds=[victim])
    (replacement,) = _members(made["asg"], name)
    assert replacement != victim


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that sends a request for any host's port P to the local worker for P."""

    upstreams: dict[int, str] = {}

    def do_GET(self):  # http.server's name
        target = urlsplit(self.path)
        upstream = self.upstreams.get(target.port)
        if upstream is None:
            self.send_error(502)
            return
        with urllib.request.urlopen(upstream + target.path, timeout=5) as response:
            body = response.read()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(python_worker, nodejs_worker):
    handler = type("Proxy", (_Proxy,), {"upstreams": {5001: python_worker.url, 5002: nodejs_worker.url}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def proxied_env(moto, proxy: str) -> dict:
    return {
        **aws_env(moto.url),
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def test_status_lists_pools_and_each_instance_with_its_release(moto, tmp_path, proxy):
    made = create_pools(moto, POOLED, tmp_path)
    result = fleet("status", "--json", "--outputs", str(made["outputs"]), env=proxied_env(moto, proxy))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    pools = {p["role"]: p for p in status["pools"]}
    for role, name in made["pools"].items():
        assert pools[role]["name"] == name
        assert (pools[role]["desired"], pools[role]["in_service"], pools[role]["healthy"]) == (1, 1, 1)
        assert [i["template_version"] for i in pools[role]["instances"]] == ["1"]
    rows = status["workers"]
    assert len(rows) == 2
    for row in rows:
        assert row["pool"] == made["pools"][row["role"]] and row["name"] == row["instance_id"]
        assert row["health"]["runtime"] == row["role"].split("-")[1] and row["health"]["build"]
        assert row["ready"] is True
    table = fleet("status", "--outputs", str(made["outputs"]), env=proxied_env(moto, proxy))
    assert table.returncode == 0, table.stderr
    assert "pools" in table.stdout and made["pools"]["worker-python"] in table.stdout


def test_wait_counts_pool_members_and_names_a_short_pool(moto, tmp_path, proxy):
    made = create_pools(moto, POOLED, tmp_path)
    outputs = str(made["outputs"])
    result = fleet("wait", "--timeout", "30", "--interval", "0.5", "--outputs", outputs, env=proxied_env(moto, proxy))
    assert result.returncode == 0, result.stderr
    assert "all 2 workers ready" in result.stdout
    dead = f"http://127.0.0.1:{free_port()}"  # a proxy nobody runs: every probe is refused on loopback
    result = fleet("wait", "--timeout", "2", "--interval", "0.5", "--outputs", outputs, env=proxied_env(moto, dead))
    assert_one_error_line(result, errors.WAIT_TIMEOUT, "timed out")


def test_redeploy_refuses_hosts_a_group_launched(moto, tmp_path):
    made = create_pools(moto, POOLED, tmp_path)
    (instance_id,) = _members(made["asg"], made["pools"]["worker-python"])
    fixed = tmp_path / "fixed.json"
    fixed.write_text(
        json.dumps(
            {
                "workers": [
                    {
                        "name": "worker-python-0",
                        "role": "worker-python",
                        "url": "http://127.0.0.1:5001",
                        "instance_id": instance_id,
                    }
                ],
                "worker_token": "t",
                "project": PROJECT,
                "stack": STACK,
                "region": "us-east-1",
                "ssh_user": "ubuntu",
            }
        )
    )
    env = aws_env(moto.url)
    assert_one_error_line(
        fleet("redeploy", "--all", "--outputs", str(fixed), env=env), 2, "belong to an Auto Scaling group"
    )
    assert_one_error_line(fleet("redeploy", "--all", "--outputs", str(made["outputs"]), env=env), 2, "no workers in")


def test_redeploy_without_aws_keys_says_it_cannot_check(tmp_path):
    fixed = tmp_path / "fixed.json"
    fixed.write_text(
        json.dumps(
            {
                "workers": [
                    {
                        "name": "w",
                        "role": "worker-python",
                        "url": "http://127.0.0.1:5001",
                        "instance_id": "i-0123456789abcdef0",
                    }
                ],
                "worker_token": "t",
                "project": PROJECT,
                "stack": STACK,
                "region": "us-east-1",
                "ssh_user": "ubuntu",
            }
        )
    )
    result = fleet("redeploy", "w", "--outputs", str(fixed), env=aws_env(None, credentials=False))
    assert_one_error_line(result, errors.FAILED, "pass --skip-pool-check")


# ---------------------------------------------------------------- rollout (moto has no instance refresh)


class ScriptedAutoScaling:
    """An Auto Scaling client that answers DescribeInstanceRefreshes from a script of statuses."""

    def __init__(self, statuses: list[dict], in_progress: bool = False):
        self.statuses, self.in_progress, self.started = list(statuses), in_progress, []

    def get_paginator(self, _name):
        group = {
            "AutoScalingGroupName": "g",
            "MinSize": 1,
            "MaxSize": 2,
            "DesiredCapacity": 1,
            "Tags": [
                {"Key": "Project", "Value": PROJECT},
                {"Key": "Stack", "Value": STACK},
                {"Key": "Role", "Value": "worker-python"},
            ],
            "Instances": [],
        }
        return type("P", (), {"paginate": lambda self, **kw: [{"AutoScalingGroups": [group]}]})()

    def start_instance_refresh(self, **params):
        from botocore.exceptions import ClientError

        if self.in_progress:
            raise ClientError({"Error": {"Code": "InstanceRefreshInProgress", "Message": "busy"}}, "Start")
        self.started.append(params)
        return {"InstanceRefreshId": "r-1"}

    def describe_instance_refreshes(self, **params):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"InstanceRefreshes": [{"InstanceRefreshId": "r-1", **status}]}


@pytest.fixture
def fleet_config(tmp_path):
    from scripts.fleet.config import load_config

    outputs = tmp_path / "o.json"
    outputs.write_text(
        json.dumps(
            {
                "workers": [],
                "pools": [{"name": "g", "role": "worker-python", "port": 5001}],
                "project": PROJECT,
                "stack": STACK,
                "region": "us-east-1",
            }
        )
    )
    return load_config(type("Args", (), {"outputs": str(outputs)})(), environ={})


def test_rollout_starts_a_refresh_with_the_program_preferences_and_reports_progress(fleet_config, capsys):
    client = ScriptedAutoScaling(
        [
            {"Status": "Pending"},
            {"Status": "InProgress", "PercentageComplete": 50, "InstancesToUpdate": 1},
            {"Status": "Successful", "PercentageComplete": 100},
        ]
    )
    line = rollout(fleet_config, "worker-python", 60, 0, client=client, sleep=lambda _s: None)
    assert line.startswith("g: rollout successful")
    (started,) = client.started
    assert started["Preferences"]["AutoRollback"] is True and started["Preferences"]["MinHealthyPercentage"] == 100
    progress = capsys.readouterr().err
    assert "InProgress, 50%, 1 to replace" in progress and "Successful" in progress


@pytest.mark.parametrize(
    ("status", "code"),
    [("RollbackSuccessful", errors.ROLLED_BACK), ("Failed", errors.FAILED), ("Cancelled", errors.FAILED)],
)
def test_a_rollout_that_does_not_succeed_says_how_it_ended(fleet_config, status, code):
    client = ScriptedAutoScaling([{"Status": status, "StatusReason": "health checks failed"}])
    with pytest.raises(FleetError) as caught:
        rollout(fleet_config, "g", 60, 0, client=client, sleep=lambda _s: None)
    assert caught.value.code == code and status in caught.value.message
    assert "health checks failed" in caught.value.message


def test_a_running_refresh_is_followed_not_restarted_and_a_timeout_is_named(fleet_config):
    client = ScriptedAutoScaling([{"Status": "InProgress"}], in_progress=True)
    ticks = iter(range(0, 1000, 10))
    with pytest.raises(FleetError) as caught:
        rollout(fleet_config, "g", 30, 0, client=client, clock=lambda: next(ticks), sleep=lambda _s: None)
    assert caught.value.code == errors.WAIT_TIMEOUT and "goes on in AWS" in caught.value.message
    assert client.started == []


@pytest.mark.parametrize(
    ("pools", "fragment"),
    [
        ({"name": "g", "role": "worker-rust", "port": 5001}, "must be an object with a role"),
        ({"name": "g", "role": "worker-python", "port": "http"}, "port must be a port number"),
        ("worker-python", "must be an object with a role"),
    ],
)
def test_a_bad_pools_entry_in_the_outputs_file_is_a_usage_error(tmp_path, pools, fragment):
    outputs = tmp_path / "o.json"
    outputs.write_text(
        json.dumps({"workers": [], "pools": [pools], "project": PROJECT, "stack": STACK, "region": "us-east-1"})
    )
    result = fleet("status", "--outputs", str(outputs), env=aws_env(None, credentials=False))
    assert_one_error_line(result, errors.USAGE, fragment)


def test_wait_and_status_name_hosts_left_on_an_older_template(moto, tmp_path, proxy):
    """A new template version (a new release) the group points at, and hosts still on the old one:
    not ready until a refresh replaces them (moto has no refresh, so they stay)."""
    made = create_pools(moto, POOLED, tmp_path)
    ec2, asg, name = made["ec2"], made["asg"], made["pools"]["worker-python"]
    ec2.create_launch_template_version(
        LaunchTemplateName="worker-python-template", SourceVersion="1", LaunchTemplateData={"InstanceType": "t2.micro"}
    )
    template = {"LaunchTemplateName": "worker-python-template", "Version": "2"}
    asg.update_auto_scaling_group(AutoScalingGroupName=name, LaunchTemplate=template)
    env, outputs = proxied_env(moto, proxy), str(made["outputs"])
    status = json.loads(fleet("status", "--json", "--outputs", outputs, env=env).stdout)
    (python_pool,) = [p for p in status["pools"] if p["role"] == "worker-python"]
    assert python_pool["template_version"] == "2"
    assert [i["template_version"] for i in python_pool["instances"]] == ["1"]
    result = fleet("wait", "--timeout", "2", "--interval", "0.5", "--outputs", outputs, env=env)
    assert_one_error_line(result, errors.WAIT_TIMEOUT, f"pool {name} (1 on an older template")
