"""The Pulumi program under Pulumi's unit-test mocks (the testing-unit-py way), plus its pure parts.

Nothing here talks to AWS or needs the Pulumi CLI: the mocks stand in for the engine and the
provider, and each run executes the real infra/__main__.py with one stack configuration.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import ipaddress
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import botocore.exceptions
import pulumi
import pytest
import yaml

from infra import bundle
from infra.config import DEFAULTS, MIN_PREFIX_LENGTH, PLAIN_HTTP_WARNING, ConfigError, parse_settings
from infra.fleet_secrets import host_secrets_policy
from infra.releases import host_read_policy
from infra.userdata import file_text
from stripes.roles import FLEET_TLS_NAME, ROLE_SPECS
from tests.support.infra_harness import (
    LAST_MOCKS,
    MOCK_ACCOUNT,
    MOCK_AMI,
    MOCK_TOKEN,
    MOCK_VPC,
    PROJECT,
    REGION,
    ROOT,
    STACK,
    is_secret_input,
    mock_cert_pem,
    mock_key_pem,
    reveal,
    run_program,
)
from tests.support.moto_server import REGION as MOTO_REGION
from tests.support.moto_server import start_moto_server

CLIENT = "198.51.100.7/32"
ADMIN = "192.0.2.0/28"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ5bGVldC10ZXN0LWtleS1mb3ItdW5pdC10ZXN0cw== ops@example"
BASE = {"clientCidr": CLIENT, "aws:region": REGION}
FIXTURE = ROOT / "tests" / "fixtures" / "stack-outputs.json"

INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
KEY_PAIR = "aws:ec2/keyPair:KeyPair"


@pytest.fixture(scope="module")
def default_run():
    return run_program(BASE)


@pytest.fixture(scope="module")
def big_run():
    return run_program({**BASE, "pythonWorkers": "3", "nodejsWorkers": "2"})


@pytest.fixture(scope="module")
def ssh_run():
    return run_program({**BASE, "adminCidr": ADMIN, "sshPublicKey": SSH_KEY})


# ---------------------------------------------------------------- what gets declared


def test_default_config_declares_one_worker_per_role(default_run):
    assert default_run.types() == {
        "random:index/randomPassword:RandomPassword": 1,
        "htp:infra:FleetTls": 1,
        "tls:index/privateKey:PrivateKey": 2,  # CA and server (a client too with mutualTls)
        "tls:index/selfSignedCert:SelfSignedCert": 1,
        "tls:index/certRequest:CertRequest": 1,
        "tls:index/locallySignedCert:LocallySignedCert": 1,
        "htp:infra:FleetSecrets": 1,
        "aws:ssm/parameter:Parameter": 3,  # token, server key, server certificate
        "htp:infra:FleetSecurity": 1,
        "aws:ec2/securityGroup:SecurityGroup": 1,
        INGRESS: 2,
        EGRESS: 2,
        "htp:infra:ReleaseStore": 1,
        "aws:s3/bucket:Bucket": 1,
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
        "aws:s3/bucketPolicy:BucketPolicy": 1,
        "aws:s3/bucketObjectv2:BucketObjectv2": 2,
        "aws:iam/role:Role": 2,  # one per worker role: each reads its own releases
        "aws:iam/rolePolicy:RolePolicy": 4,  # per role: its releases, the stack's secrets
        "aws:iam/instanceProfile:InstanceProfile": 2,
        "htp:infra:WorkerNode": 2,
        INSTANCE: 2,
    }
    assert sorted(r.name for r in default_run.of_type("htp:infra:WorkerNode")) == ["worker-nodejs-0", "worker-python-0"]


def test_counts_scale_instances_only(big_run, default_run):
    counts = big_run.types()
    assert counts[INSTANCE] == counts["htp:infra:WorkerNode"] == 5
    assert sorted(r.name for r in big_run.of_type("htp:infra:WorkerNode")) == [
        "worker-nodejs-0",
        "worker-nodejs-1",
        "worker-python-0",
        "worker-python-1",
        "worker-python-2",
    ]
    # Everything else is per fleet, not per instance.
    assert {t: n for t, n in counts.items() if t not in (INSTANCE, "htp:infra:WorkerNode")} == {
        t: n for t, n in default_run.types().items() if t not in (INSTANCE, "htp:infra:WorkerNode")
    }


def test_a_role_with_zero_workers_gets_no_port_and_no_release():
    run = run_program({**BASE, "pythonWorkers": "0"})
    assert [r.inputs["tags"]["Role"] for r in run.of_type(INSTANCE)] == ["worker-nodejs"]
    assert [r.inputs["fromPort"] for r in run.of_type(INGRESS)] == [5002]
    assert [r.inputs["key"].split("/")[0] for r in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")] == [
        "worker-nodejs"
    ]
    assert run.outputs["python_worker_url"] is None
    assert [r.name for r in run.of_type("aws:iam/role:Role")] == ["releases-worker-nodejs-host-role"]


def test_child_resources_are_named_after_their_component(big_run):
    for resource in big_run.mocks.resources:
        if resource.typ == INSTANCE:
            assert resource.name.startswith(resource.inputs["tags"]["Name"] + "-")
        elif not resource.typ.startswith(("htp:", "random:")):
            assert resource.name.startswith(("workers-", "releases-", "tls-", "secrets-")), resource.name


# ---------------------------------------------------------------- network policy


@pytest.mark.parametrize("run_name", ["default_run", "big_run", "ssh_run"])
def test_no_ingress_is_open_to_the_world(request, run_name):
    for rule in request.getfixturevalue(run_name).of_type(INGRESS):
        assert rule.inputs["cidrIpv4"] != "0.0.0.0/0"
        assert ipaddress.ip_network(rule.inputs["cidrIpv4"]).prefixlen >= MIN_PREFIX_LENGTH
        assert "cidrIpv6" not in rule.inputs


def test_worker_ports_are_open_to_the_client_cidr_only(default_run):
    rules = {
        (r.inputs["fromPort"], r.inputs["toPort"], r.inputs["ipProtocol"], r.inputs["cidrIpv4"])
        for r in default_run.of_type(INGRESS)
    }
    assert rules == {(5001, 5001, "tcp", CLIENT), (5002, 5002, "tcp", CLIENT)}


def test_custom_ports_follow_config():
    run = run_program({**BASE, "pythonPort": "8081", "nodejsPort": "8082"})
    assert sorted(r.inputs["fromPort"] for r in run.of_type(INGRESS)) == [8081, 8082]
    assert sorted(w["url"].rsplit(":", 1)[1] for w in run.outputs["workers"]) == ["8081", "8082"]


def test_no_ssh_rule_or_key_without_admin_cidr(default_run, big_run):
    for run in (default_run, big_run):
        assert all(r.inputs["fromPort"] != 22 for r in run.of_type(INGRESS))
        assert run.of_type(KEY_PAIR) == []
        assert all("keyName" not in r.inputs for r in run.of_type(INSTANCE))


def test_ssh_only_from_admin_cidr_with_both_settings(ssh_run):
    ssh_rules = [r for r in ssh_run.of_type(INGRESS) if r.inputs["fromPort"] == 22]
    assert [(r.inputs["toPort"], r.inputs["cidrIpv4"]) for r in ssh_rules] == [(22, ADMIN)]
    worker_rules = [r for r in ssh_run.of_type(INGRESS) if r.inputs["fromPort"] != 22]
    assert {r.inputs["cidrIpv4"] for r in worker_rules} == {CLIENT}
    (key_pair,) = ssh_run.of_type(KEY_PAIR)
    assert key_pair.inputs["publicKey"] == SSH_KEY
    assert {r.inputs["keyName"] for r in ssh_run.of_type(INSTANCE)} == {"workers-ssh-key-0001"}


def test_egress_is_http_and_https_only(default_run):
    rules = {
        (r.inputs["ipProtocol"], r.inputs["fromPort"], r.inputs["toPort"], r.inputs["cidrIpv4"])
        for r in default_run.of_type(EGRESS)
    }
    assert rules == {("tcp", 80, 80, "0.0.0.0/0"), ("tcp", 443, 443, "0.0.0.0/0")}


def test_default_vpc_unless_a_subnet_is_given(default_run):
    (group,) = default_run.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert "vpcId" not in group.inputs
    assert all("subnetId" not in r.inputs for r in default_run.of_type(INSTANCE))

    run = run_program({**BASE, "subnetId": "subnet-0123456789abcdef0"})
    (group,) = run.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == MOCK_VPC
    assert {r.inputs["subnetId"] for r in run.of_type(INSTANCE)} == {"subnet-0123456789abcdef0"}


# ---------------------------------------------------------------- instances (checked inside Output.apply)


def _nodes(config: dict) -> list:
    return run_program(config).namespace["nodes"]


@pytest.fixture(scope="module")
def nodes():
    return _nodes({**BASE, "pythonWorkers": "2", "nodejsWorkers": "1"})


@pulumi.runtime.test
def test_instances_require_imdsv2(nodes):
    def check(options_list):
        for options in options_list:
            assert options["http_tokens"] == "required"
            assert options["http_put_response_hop_limit"] == 1

    return pulumi.Output.all(*[n.instance.metadata_options for n in nodes]).apply(check)


@pulumi.runtime.test
def test_root_volumes_are_encrypted_gp3(nodes):
    def check(devices):
        for device in devices:
            assert device["encrypted"] is True
            assert device["volume_type"] == "gp3"
            assert device["delete_on_termination"] is True

    return pulumi.Output.all(*[n.instance.root_block_device for n in nodes]).apply(check)


@pulumi.runtime.test
def test_instances_carry_the_shared_tags(nodes):
    def check(args):
        names, tag_sets = args[: len(nodes)], args[len(nodes) :]
        for name, tags in zip(names, tag_sets, strict=True):
            assert tags == {"Name": name, "Project": PROJECT, "Stack": STACK, "Role": name.rsplit("-", 1)[0]}

    return pulumi.Output.all(*[n.instance.tags["Name"] for n in nodes], *[n.instance.tags for n in nodes]).apply(check)


@pulumi.runtime.test
def test_new_user_data_replaces_the_instance(nodes):
    def check(flags):
        assert flags == [True] * len(nodes)

    return pulumi.Output.all(*[n.instance.user_data_replace_on_change for n in nodes]).apply(check)


@pulumi.runtime.test
def test_each_instance_gets_the_profile_of_its_own_role(nodes):
    def check(profiles):
        assert profiles == [f"releases-{n.role}-host-profile-0001" for n in nodes]
        assert len(set(profiles)) == 2  # two roles, two profiles: none shared

    return pulumi.Output.all(*[n.instance.iam_instance_profile for n in nodes]).apply(check)


@pulumi.runtime.test
def test_user_data_is_not_secret_because_it_holds_none():
    """The token and keys are secrets; the user-data derived from parameter names is not (so a
    diff shows it), which also proves no secret Output flowed into it."""
    namespace = run_program({**BASE, "mutualTls": "true"}).namespace
    pki = namespace["pki"]

    def check(flags):
        assert flags == [False, True, True, True, True]

    return pulumi.Output.all(
        namespace["user_data"].is_secret(),
        namespace["worker_token"].is_secret(),
        pki.server_key_pem.is_secret(),
        pki.client_key_pem.is_secret(),
        pki.client_cert_pem.is_secret(),
    ).apply(check)


def test_instances_use_the_release_profile_and_burst_without_surprise_bills(big_run):
    for instance in big_run.of_type(INSTANCE):
        role = instance.inputs["tags"]["Role"]
        assert instance.inputs["iamInstanceProfile"] == f"releases-{role}-host-profile-0001"
        assert instance.inputs["instanceType"] == "t2.micro"
        assert instance.inputs["creditSpecification"] == {"cpuCredits": "standard"}
        assert instance.inputs["associatePublicIpAddress"] is True


def test_ami_is_the_latest_canonical_ubuntu_2404(default_run):
    (call,) = [c for c in default_run.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]
    assert call.args["owners"] == ["099720109477"]
    assert call.args["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in call.args["filters"]}
    assert filters == {
        "name": ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"],
        "virtualization-type": ["hvm"],
        "architecture": ["x86_64"],
    }
    assert {r.inputs["ami"] for r in default_run.of_type(INSTANCE)} == {MOCK_AMI}


def test_a_pinned_ami_skips_the_lookup():
    run = run_program({**BASE, "amiId": "ami-0fedcba9876543210"})
    assert [c for c in run.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"] == []
    assert {r.inputs["ami"] for r in run.of_type(INSTANCE)} == {"ami-0fedcba9876543210"}


# ---------------------------------------------------------------- release store


def test_release_bucket_is_private_and_hosts_read_only_their_releases(default_run):
    (block,) = default_run.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        block.inputs[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    roles = {r.name: r for r in default_run.of_type("aws:iam/role:Role")}
    assert sorted(roles) == ["releases-worker-nodejs-host-role", "releases-worker-python-host-role"]
    for role in roles.values():
        trust = json.loads(role.inputs["assumeRolePolicy"])
        assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    policies = {
        p.inputs["role"]: json.loads(p.inputs["policy"])
        for p in default_run.of_type("aws:iam/rolePolicy:RolePolicy")
        if p.name.endswith("-read-release")
    }
    # Each host role may read its own role's prefix and nothing else (not the other role's).
    assert policies == {
        f"releases-{role}-host-role-id": {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::releases-bucket-0001/{role}/*"}
            ],
        }
        for role in ("worker-python", "worker-nodejs")
    }
    profiles = {p.name: p.inputs["role"] for p in default_run.of_type("aws:iam/instanceProfile:InstanceProfile")}
    assert profiles == {
        f"releases-{r}-host-profile": f"releases-{r}-host-role-0001" for r in ("worker-python", "worker-nodejs")
    }


def test_one_roles_policy_does_not_match_the_other_roles_release(default_run):
    keys = {o.inputs["key"] for o in default_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    python_only = json.loads(host_read_policy("arn:aws:s3:::b", "worker-python"))
    (resource,) = [s["Resource"] for s in python_only["Statement"]]
    readable = {k for k in keys if f"arn:aws:s3:::b/{k}".startswith(resource.rstrip("*"))}
    assert readable == {k for k in keys if k.startswith("worker-python/")} and len(keys) == 2


def test_release_bucket_refuses_plain_http(default_run):
    (bucket_policy,) = default_run.of_type("aws:s3/bucketPolicy:BucketPolicy")
    assert bucket_policy.inputs["bucket"] == "releases-bucket-id"
    assert json.loads(bucket_policy.inputs["policy"])["Statement"] == [
        {
            "Sid": "DenyPlainHttp",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": ["arn:aws:s3:::releases-bucket-0001", "arn:aws:s3:::releases-bucket-0001/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]


def test_release_objects_are_the_bundle_tarballs(default_run):
    for obj in default_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        role = obj.inputs["key"].split("/")[0]
        files = bundle.bundle_files(role)
        assert obj.inputs["key"] == f"{role}/{bundle.build_id(files)}.tar.gz"
        assert base64.b64decode(obj.inputs["contentBase64"]) == bundle.tarball(files)
        assert obj.inputs["serverSideEncryption"] == "AES256"


def test_user_data_points_at_the_release_with_its_sha256(default_run):
    objects = {o.inputs["key"]: o for o in default_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    for instance in default_run.of_type(INSTANCE):
        user_data = instance.inputs["userData"]
        key = next(k for k in objects if f"--key {k} " in user_data)
        archive = base64.b64decode(objects[key].inputs["contentBase64"])
        assert f"--sha256 {hashlib.sha256(archive).hexdigest()} " in user_data
        assert "--bucket releases-bucket-0001 " in user_data


# ---------------------------------------------------------------- TLS and the secrets in SSM

TLS_KEY = "tls:index/privateKey:PrivateKey"
SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
PARAMETER = "aws:ssm/parameter:Parameter"
PREFIX = f"/{PROJECT}/{STACK}"


@pytest.fixture(scope="module")
def mtls_run():
    return run_program({**BASE, "mutualTls": "true"})


def test_a_fleet_ca_signs_one_server_certificate_for_the_fleet_name(default_run):
    keys = {r.name: r.inputs for r in default_run.of_type(TLS_KEY)}
    assert keys == {name: {"algorithm": "ECDSA", "ecdsaCurve": "P256"} for name in ("tls-ca-key", "tls-server-key")}
    (ca,) = default_run.of_type("tls:index/selfSignedCert:SelfSignedCert")
    assert ca.inputs["isCaCertificate"] is True and ca.inputs["setSubjectKeyId"] is True
    assert set(ca.inputs["allowedUses"]) == {"cert_signing", "crl_signing", "digital_signature"}
    assert ca.inputs["validityPeriodHours"] >= 5 * 365 * 24
    assert reveal(ca.inputs["privateKeyPem"]) == mock_key_pem("tls-ca-key")
    (request,) = default_run.of_type("tls:index/certRequest:CertRequest")
    assert request.inputs["dnsNames"] == [FLEET_TLS_NAME] and "ipAddresses" not in request.inputs
    (server,) = default_run.of_type(SIGNED)
    assert server.name == "tls-server-cert"
    assert server.inputs["allowedUses"] == ["digital_signature", "server_auth"]
    assert server.inputs["validityPeriodHours"] == 365 * 24 and server.inputs["earlyRenewalHours"] == 30 * 24
    assert reveal(server.inputs["caPrivateKeyPem"]) == mock_key_pem("tls-ca-key")
    assert server.inputs["caCertPem"] == mock_cert_pem("tls-ca")


def test_mutual_tls_adds_a_client_certificate_and_the_client_ca(mtls_run):
    signed = {r.name: r.inputs for r in mtls_run.of_type(SIGNED)}
    assert signed["tls-client-cert"]["allowedUses"] == ["digital_signature", "client_auth"]
    parameters = {r.inputs["name"]: r.inputs for r in mtls_run.of_type(PARAMETER)}
    assert parameters[f"{PREFIX}/worker-client-ca"]["type"] == "String"
    assert reveal(parameters[f"{PREFIX}/worker-client-ca"]["value"]) == mock_cert_pem("tls-ca")
    outputs = mtls_run.outputs
    assert outputs["worker_client_cert_pem"] == mock_cert_pem("tls-client-cert")
    assert outputs["worker_client_key_pem"] == mock_key_pem("tls-client-key")
    assert mtls_run.secret_outputs == {"worker_token", "worker_client_cert_pem", "worker_client_key_pem"}
    for instance in mtls_run.of_type(INSTANCE):
        role = instance.inputs["tags"]["Role"]
        assert f"WORKER_TLS_CLIENT_CA=/etc/{role}/secrets/client-ca.crt\n" in instance.inputs["userData"]
        assert "--group worker --client-ca\n" in instance.inputs["userData"]


def test_ssm_holds_the_token_and_the_server_key_as_securestrings_under_the_stack(default_run):
    parameters = {r.inputs["name"]: r for r in default_run.of_type(PARAMETER)}
    assert {name: r.inputs["type"] for name, r in parameters.items()} == {
        f"{PREFIX}/worker-token": "SecureString",
        f"{PREFIX}/worker-tls-key": "SecureString",
        f"{PREFIX}/worker-tls-cert": "String",
    }
    token, key = parameters[f"{PREFIX}/worker-token"], parameters[f"{PREFIX}/worker-tls-key"]
    assert is_secret_input(token.inputs["value"]) and reveal(token.inputs["value"]) == MOCK_TOKEN
    assert is_secret_input(key.inputs["value"]) and reveal(key.inputs["value"]) == mock_key_pem("tls-server-key")
    assert reveal(parameters[f"{PREFIX}/worker-tls-cert"].inputs["value"]) == mock_cert_pem("tls-server-cert")
    # Rotation (`fleet rotate-token`) owns the token after the first `pulumi up`; the rest Pulumi keeps.
    options = default_run.mocks.options
    assert [options[r.name].ignore_changes for r in parameters.values()] == [("value",), (), ()]
    assert all(r.inputs["tags"] == {"Project": PROJECT, "Stack": STACK} for r in parameters.values())
    assert default_run.outputs["secret_parameters"] == {
        "worker-token": f"{PREFIX}/worker-token",
        "worker-tls-key": f"{PREFIX}/worker-tls-key",
        "worker-tls-cert": f"{PREFIX}/worker-tls-cert",
    }


def _host_files(user_data: str) -> str:
    """The document plus every embedded file as the host writes it (gz+b64 undone)."""
    return user_data + "".join(file_text(entry) for entry in yaml.safe_load(user_data)["write_files"])


@pytest.mark.parametrize("run_name", ["default_run", "mtls_run"])
def test_user_data_names_parameters_and_holds_no_secret(request, run_name):
    run = request.getfixturevalue(run_name)
    for instance in run.of_type(INSTANCE):
        role = instance.inputs["tags"]["Role"]
        text = _host_files(instance.inputs["userData"])
        for secret in (MOCK_TOKEN, "mock-key-", "WORKER_TOKEN="):
            assert secret not in text, (role, secret)
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), role
        assert f"--prefix {PREFIX} --dest /etc/{role}/secrets" in text
        assert f"WORKER_TOKEN_FILE=/etc/{role}/secrets/worker-token\n" in text
        assert f"WORKER_TLS_CERT=/etc/{role}/secrets/tls.crt\nWORKER_TLS_KEY=/etc/{role}/secrets/tls.key\n" in text


def test_each_host_profile_reads_this_stacks_parameters_once_they_exist(default_run):
    policies = {p.name: p for p in default_run.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-secrets")}
    expected = host_secrets_policy(PREFIX, region=REGION, account=MOCK_ACCOUNT)
    assert {name: p.inputs["policy"] for name, p in policies.items()} == {
        f"releases-{role}-read-secrets": expected for role in ("worker-python", "worker-nodejs")
    }
    options = default_run.mocks.options
    for name in policies:
        # The policy waits for the parameters, the profile for the policy: no host boots before both.
        assert {u.rsplit("::", 1)[1] for u in options[name].dependencies} >= {
            "secrets-worker-token",
            "secrets-worker-tls-key",
            "secrets-worker-tls-cert",
        }
        profile = name.replace("-read-secrets", "-host-profile")
        assert any(u.endswith(f"::{name}") for u in options[profile].dependencies)


def test_the_secrets_policy_matches_this_stack_only():
    document = json.loads(host_secrets_policy("/p/dev", region="eu-west-1", account="111122223333"))
    read, decrypt = document["Statement"]
    assert (read["Effect"], read["Action"]) == ("Allow", ["ssm:GetParameter", "ssm:GetParameters"])
    arn = "arn:aws:ssm:eu-west-1:111122223333:parameter"
    # IAM's `*` matches any characters, `/` included: fnmatchcase has the same semantics here.
    readable = {
        name
        for name in (
            "/p/dev/worker-token",
            "/p/dev/worker-tls-key",
            "/p/dev2/worker-token",
            "/p/other/worker-token",
            "/q/dev/worker-token",
            "/p/devx",
        )
        if fnmatch.fnmatchcase(arn + name, read["Resource"])
    }
    assert readable == {"/p/dev/worker-token", "/p/dev/worker-tls-key"}
    assert not fnmatch.fnmatchcase(
        arn.replace("111122223333", "444455556666") + "/p/dev/worker-token", read["Resource"]
    )
    assert (decrypt["Action"], decrypt["Condition"]) == (
        "kms:Decrypt",
        {"StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}},
    )
    assert decrypt["Resource"] == "arn:aws:kms:eu-west-1:111122223333:key/*"


def test_the_programs_host_policy_reads_its_stack_and_not_another_on_moto(tmp_path):
    """The policy the program declares, attached to an IAM user on a moto server that checks SSM
    calls against each parameter's ARN (as AWS does): this stack's parameters read, another's refused."""
    run = run_program({**BASE, "aws:region": MOTO_REGION})
    (policy,) = [
        p.inputs["policy"]
        for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
        if p.name == "releases-worker-python-read-secrets"
    ]
    server = start_moto_server(tmp_path / "moto", ssm_arns=True)
    try:
        admin = server.client("ssm")
        for prefix in (PREFIX, f"/{PROJECT}/other", f"/{PROJECT}/{STACK}2"):
            admin.put_parameter(Name=f"{prefix}/worker-token", Value=MOCK_TOKEN, Type="SecureString")
        keys = server.iam_user("host", policy)
        server.enforce_iam(True)
        host = server.client("ssm", **keys)
        reply = host.get_parameters(Names=[f"{PREFIX}/worker-token"], WithDecryption=True)
        assert [p["Value"] for p in reply["Parameters"]] == [MOCK_TOKEN]
        for other in (f"/{PROJECT}/other/worker-token", f"/{PROJECT}/{STACK}2/worker-token"):
            with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
                host.get_parameter(Name=other, WithDecryption=True)
    finally:
        server.stop()


def test_worker_tls_false_gives_plain_http_and_no_ca_to_pin():
    run = run_program({**BASE, "workerTls": "false"})
    assert {w["url"].split(":", 1)[0] for w in run.outputs["workers"]} == {"http"}
    assert not {"worker_ca_pem", "worker_tls_name"} & set(run.outputs)
    for instance in run.of_type(INSTANCE):
        assert "WORKER_TLS_" not in instance.inputs["userData"]
    # The parameters stay (the host's fetch reads them); turning TLS back on keeps the same CA.
    assert len(run.of_type(PARAMETER)) == 3 and run.of_type("tls:index/selfSignedCert:SelfSignedCert")
    assert PLAIN_HTTP_WARNING in settings(workerTls="false").warnings


def test_tls_outputs_let_the_coordinator_pin_the_ca_and_name(default_run):
    assert default_run.outputs["worker_ca_pem"] == mock_cert_pem("tls-ca")
    assert default_run.outputs["worker_tls_name"] == FLEET_TLS_NAME == "workers.stripes.internal"
    assert "worker_client_key_pem" not in default_run.outputs


# ---------------------------------------------------------------- exports


def test_exports_list_every_worker_and_hide_the_token(big_run):
    outputs = big_run.outputs
    workers = outputs["workers"]
    assert [w["name"] for w in workers] == [
        "worker-python-0",
        "worker-python-1",
        "worker-python-2",
        "worker-nodejs-0",
        "worker-nodejs-1",
    ]
    assert len({w["url"] for w in workers}) == 5
    for worker in workers:
        assert worker["url"] == f"https://{worker['public_ip']}:{5001 if worker['runtime'] == 'python' else 5002}"
        assert worker["role"] == f"worker-{worker['runtime']}"
        assert worker["instance_id"].startswith("i-")
        assert worker["operations"] == list(ROLE_SPECS[worker["role"]].operations)
    assert outputs["python_worker_url"] == workers[0]["url"]
    assert outputs["nodejs_worker_url"] == workers[3]["url"]
    assert outputs["worker_token"] == MOCK_TOKEN
    assert big_run.secret_outputs == {"worker_token"}
    assert (outputs["project"], outputs["stack"], outputs["region"], outputs["ssh_user"]) == (
        PROJECT,
        STACK,
        REGION,
        "ubuntu",
    )


# Written by this infra; a fixture without them predates TLS (the coordinator's tests own it).
TLS_OUTPUTS = {"worker_ca_pem", "worker_tls_name", "secret_parameters"}


def test_exports_have_the_shape_of_the_fixture_file(default_run):
    fixture = json.loads(FIXTURE.read_text())
    assert set(fixture) <= set(default_run.outputs) <= set(fixture) | TLS_OUTPUTS
    assert [set(w) for w in default_run.outputs["workers"]] == [set(w) for w in fixture["workers"]]
    assert [w["role"] for w in default_run.outputs["workers"]] == [w["role"] for w in fixture["workers"]]
    for name, value in fixture.items():
        assert type(default_run.outputs[name]) is type(value), name


def test_a_configured_token_is_used_and_stays_secret():
    token = "configured-token-" + "a" * 20
    run = run_program({**BASE, "workerToken": token}, secret_keys=("workerToken",))
    assert run.of_type("random:index/randomPassword:RandomPassword") == []
    assert run.outputs["worker_token"] == token
    assert run.secret_outputs == {"worker_token"}


def test_a_token_stored_in_plain_text_is_refused():
    with pytest.raises(ConfigError, match="--secret workerToken"):
        run_program({**BASE, "workerToken": "plain-text-token-123456"})


def test_missing_client_cidr_stops_with_the_command_that_sets_it():
    with pytest.raises(ConfigError) as caught:
        run_program({"aws:region": REGION})
    message = str(caught.value)
    # A RunError: `pulumi up` prints just the message, no traceback.
    assert isinstance(caught.value, pulumi.RunError)
    assert "clientCidr is required" in message
    assert 'pulumi config set clientCidr "$(curl -s https://checkip.amazonaws.com)/32"' in message
    assert "\n" not in message


def test_missing_region_is_named():
    with pytest.raises(ConfigError, match="aws:region"):
        run_program({"clientCidr": CLIENT})


def test_missing_worker_files_stop_before_any_resource(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "REPO_ROOT", tmp_path)
    with pytest.raises(pulumi.RunError, match="worker folder .* does not exist"):
        run_program(BASE)
    assert LAST_MOCKS[0].resources == []


# ---------------------------------------------------------------- config rules (pure)


def settings(**raw):
    return parse_settings({"clientCidr": CLIENT, **raw}, project=PROJECT, stack=STACK, region=REGION)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"clientCidr": "0.0.0.0/0"}, "whole internet"),
        ({"clientCidr": "10.0.0.0/7"}, "whole internet"),
        ({"clientCidr": "10.0.0.0/7", "allowWideCidr": "true"}, "whole internet"),
        ({"clientCidr": "10.0.0.0/8"}, "16,777,216 addresses, wider than /16; refused"),
        ({"clientCidr": "10.0.0.0/15"}, "pulumi config set allowWideCidr true"),
        ({"adminCidr": "172.16.0.0/12", "sshPublicKey": SSH_KEY}, "adminCidr '172.16.0.0/12' admits"),
        ({"allowWideCidr": "yes"}, "allowWideCidr must be true or false"),
        ({"clientCidr": "198.51.100.7/24"}, "host bits"),
        ({"clientCidr": "my-laptop"}, "not an IPv4 CIDR"),
        ({"clientCidr": "2001:db8::/64"}, "IPv6"),
        ({"adminCidr": "0.0.0.0/0", "sshPublicKey": SSH_KEY}, "adminCidr '0.0.0.0/0' opens"),
        ({"adminCidr": ADMIN}, "sshPublicKey is not set"),
        ({"sshPublicKey": SSH_KEY}, "adminCidr is not set"),
        ({"adminCidr": ADMIN, "sshPublicKey": "ssh-dss AAAAB3NzaC1kc3M="}, "OpenSSH public key"),
        ({"adminCidr": ADMIN, "sshPublicKey": "ssh-ed25519 not*base64"}, "not valid base64"),
        ({"adminCidr": ADMIN, "sshPublicKey": "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA=="}, "does not match"),
        ({"pythonWorkers": "0", "nodejsWorkers": "0"}, "at least one worker"),
        ({"pythonWorkers": "11"}, "between 0 and 10"),
        ({"nodejsWorkers": "two"}, "whole number"),
        ({"pythonPort": "5002"}, "must differ"),
        ({"pythonPort": "80"}, "between 1024 and 65535"),
        ({"instanceType": "t4g.micro"}, "arm64"),
        ({"instanceType": "m7gd.large"}, "arm64"),
        ({"instanceType": "micro"}, "not an EC2 instance type"),
        ({"workerToken": "short"}, "16-256 characters"),
        ({"workerToken": "has space in it 1234567"}, "16-256 characters"),
        ({"amiId": "ubuntu"}, "not an AMI id"),
        ({"subnetId": "vpc-0123456789abcdef0"}, "not a subnet id"),
        ({"workerTls": "maybe"}, "workerTls must be true or false"),
        ({"workerTls": "false", "mutualTls": "true"}, "mutualTls needs workerTls: true"),
    ],
)
def test_bad_settings_are_refused_with_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as caught:
        settings(**raw)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "raw, warned",
    [
        ({"clientCidr": "198.51.100.0/24"}, []),
        ({"clientCidr": "198.51.96.0/20"}, ["clientCidr 198.51.96.0/20 admits 4,096 addresses"]),
        (
            {"clientCidr": "10.0.0.0/16", "adminCidr": "10.1.0.0/23", "sshPublicKey": SSH_KEY},
            ["clientCidr 10.0.0.0/16 admits 65,536", "adminCidr 10.1.0.0/23 admits 512"],
        ),
        ({"clientCidr": "10.0.0.0/8", "allowWideCidr": "true"}, ["clientCidr 10.0.0.0/8 admits 16,777,216"]),
    ],
)
def test_networks_wider_than_24_are_warned_about(raw, warned):
    parsed = settings(**raw)
    assert [w.split(" addresses")[0] for w in parsed.warnings] == [w.split(" addresses")[0] for w in warned]
    assert all("knock on them" in w and "\n" not in w for w in parsed.warnings)


def test_pulumi_up_shows_the_wide_network_warning(monkeypatch):
    shown = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: shown.append(message))
    run = run_program({**BASE, "clientCidr": "10.0.0.0/12", "allowWideCidr": "true"})
    assert {r.inputs["cidrIpv4"] for r in run.of_type(INGRESS)} == {"10.0.0.0/12"}
    assert [m for m in shown if "clientCidr 10.0.0.0/12 admits 1,048,576 addresses" in m]


def test_good_settings_are_normalised():
    parsed = settings(
        clientCidr=" 198.51.100.7 ",
        instanceType="t3.micro",
        adminCidr="192.0.2.0/28",
        sshPublicKey=f"  {SSH_KEY}  ",
        workerToken="x" * 16,
    )
    assert parsed.client_cidr == "198.51.100.7/32"
    assert parsed.ssh_public_key == SSH_KEY
    assert parsed.instance_type == "t3.micro"
    assert parsed.ssh_enabled and parsed.worker_token == "x" * 16
    assert settings(instanceType="g4dn.xlarge").instance_type == "g4dn.xlarge"  # x86 GPU type


def test_pulumi_yaml_declares_every_setting_with_the_code_defaults():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT
    assert project["main"] == "infra/"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    declared = project["config"]
    assert set(declared) == set(DEFAULTS)
    for key, spec in declared.items():
        assert spec["description"], key
        assert str(spec["default"]).lower() == DEFAULTS[key], key
        kind = "integer" if DEFAULTS[key].isdigit() else "boolean" if DEFAULTS[key] in ("true", "false") else "string"
        assert spec["type"] == kind, key
        # A secret-typed key with a plain default fails the engine's check ("must be encrypted").
        assert "secret" not in spec, key


def test_dev_stack_settings_are_valid_and_hold_no_secret():
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = {key.split(":", 1)[1]: str(value) for key, value in stack.items() if key.startswith(PROJECT + ":")}
    assert "workerToken" not in raw and "clientCidr" not in raw
    parse_settings({**raw, "clientCidr": CLIENT}, project=PROJECT, stack="dev", region=stack["aws:region"])


# ---------------------------------------------------------------- bundle (shared with the fleet tool)


def _tree(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


WORKER_TREE = {
    "worker-nodejs/server.js": "require('./app')\n",
    "worker-nodejs/app.js": "module.exports = {}\n",
    "worker-nodejs/package.json": "{}\n",
    "worker-nodejs/package-lock.json": '{"lockfileVersion": 3}\n',
    "worker-nodejs/README.md": "docs\n",
    "worker-nodejs/Dockerfile": "FROM node\n",
    "worker-nodejs/test/app.test.js": "test\n",
    "worker-nodejs/app.test.js": "test\n",
    "worker-nodejs/node_modules/x/index.js": "x\n",
    "worker-nodejs/lib/util.js": "util\n",
}
SHIPPED = ["app.js", "lib/util.js", "package-lock.json", "package.json", "server.js"]


def test_bundle_without_git_walks_the_folder_with_exclusions(tmp_path):
    _tree(tmp_path, WORKER_TREE)
    assert sorted(bundle.bundle_files("worker-nodejs", tmp_path)) == SHIPPED


def test_bundle_in_git_ships_tracked_files_only(tmp_path):
    _tree(tmp_path, WORKER_TREE)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "worker-nodejs"], check=True)
    (tmp_path / "worker-nodejs" / "scratch.js").write_text("untracked junk\n")
    (tmp_path / "worker-nodejs" / "lib" / "util.js").write_text("edited, still tracked\n")
    files = bundle.bundle_files("worker-nodejs", tmp_path)
    assert sorted(files) == SHIPPED
    assert files["lib/util.js"] == b"edited, still tracked\n"


def test_bundle_refuses_unknown_roles_and_incomplete_workers(tmp_path):
    with pytest.raises(ValueError, match="unknown role"):
        bundle.bundle_files("worker-go", tmp_path)
    _tree(tmp_path, {"worker-nodejs/app.js": "x\n"})
    with pytest.raises(FileNotFoundError, match="lacks package.json, package-lock.json, server.js"):
        bundle.bundle_files("worker-nodejs", tmp_path)
    _tree(tmp_path, {"worker-python/requirements.txt": "flask==3.1.3\n"})
    with pytest.raises(FileNotFoundError, match="lacks worker_python/__main__.py"):
        bundle.bundle_files("worker-python", tmp_path)


def test_build_id_and_tarball_are_deterministic():
    files = {"b.py": b"b", "a/x.py": b"x", "requirements.txt": b"flask==3.1.3\n"}
    assert bundle.build_id(files) == bundle.build_id(dict(reversed(list(files.items()))))
    assert len(bundle.build_id(files)) == 12
    assert bundle.build_id(files) != bundle.build_id({**files, "b.py": b"c"})
    assert bundle.build_id({"ab": b"c"}) != bundle.build_id({"a": b"bc"})
    archive = bundle.tarball(files)
    assert archive == bundle.tarball(dict(reversed(list(files.items()))))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(files)
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}
        assert {m.name: tar.extractfile(m).read() for m in members} == files
    assert bundle.deps_fingerprint("worker-python", files) == hashlib.sha256(b"flask==3.1.3\n").hexdigest()
    with pytest.raises(FileNotFoundError, match="package-lock.json"):
        bundle.deps_fingerprint("worker-nodejs", files)


# ---------------------------------------------------------------- scripts/stack_outputs.py
# The Pulumi CLI cannot be installed here, so a stand-in `pulumi` on PATH plays its part.


def _run_stack_outputs(tmp_path: Path, fake_pulumi: str | None, *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if fake_pulumi is not None:
        script = bin_dir / "pulumi"
        script.write_text("#!/bin/sh\n" + fake_pulumi)
        script.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.stack_outputs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stack_outputs_writes_the_file_privately_and_atomically(tmp_path):
    target = tmp_path / "out" / "stack-outputs.json"
    fake = f'echo "$@" > {tmp_path}/argv\ncat {FIXTURE}\n'
    result = _run_stack_outputs(tmp_path, fake, "--stack", "dev", "--output", str(target))
    assert result.returncode == 0, result.stderr
    assert json.loads(target.read_text()) == json.loads(FIXTURE.read_text())
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["stack-outputs.json"]
    assert (tmp_path / "argv").read_text().split() == [
        "stack",
        "output",
        "--json",
        "--show-secrets",
        "--stack",
        "dev",
        "--non-interactive",
    ]
    assert "2 workers" in result.stdout and FIXTURE.name not in result.stderr
    assert json.loads(FIXTURE.read_text())["worker_token"] not in result.stdout


@pytest.mark.parametrize(
    "fake, message",
    [
        (None, "the pulumi CLI is not on PATH"),
        ("echo 'error: no stack named dev found' >&2; exit 255\n", "pulumi exited 255: error: no stack named dev"),
        ("echo not json\n", "printed no usable JSON"),
        ("echo '{}'\n", "run `pulumi up` first"),
        ("""echo '{"workers": [{"url": "http://203.0.113.1:5001"}], "worker_token": "[secret]"}'\n""", "still masked"),
    ],
)
def test_stack_outputs_failures_are_one_line_and_write_nothing(tmp_path, fake, message):
    target = tmp_path / "stack-outputs.json"
    result = _run_stack_outputs(tmp_path, fake, "--output", str(target))
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")  # as the other tools' errors (it said "stack_outputs: ")
    assert not target.exists()
