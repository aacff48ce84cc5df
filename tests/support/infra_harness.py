"""Run the real Pulumi program (infra/__main__.py) under Pulumi's unit-test mocks.

Pulumi's mocks replace the engine and the AWS provider: every resource the program declares is
recorded with its inputs, and the one data-source call (the AMI lookup) answers from here.
"""

from __future__ import annotations

import runpy
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = ROOT / "infra"
PROJECT = "heterogeneous-task-processor"
STACK = "dev"
REGION = "eu-west-1"
MOCK_AMI = "ami-0123456789abcdef0"
MOCK_VPC = "vpc-0123456789abcdef0"
MOCK_SUBNETS = ("subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2", "subnet-0aaaaaaaaaaaaaaa3")
MOCK_TOKEN = "generated-token-0123456789abcdefghij"
MOCK_ACCOUNT = "123456789012"


def mock_key_pem(name: str) -> str:
    """What the mocks' tls.PrivateKey `name` holds: PEM-shaped, so a leak is found by its header."""
    return f"-----BEGIN EC PRIVATE KEY-----\nmock-key-{name}\n-----END EC PRIVATE KEY-----\n"


def mock_cert_pem(name: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\nmock-cert-{name}\n-----END CERTIFICATE-----\n"


def is_secret_input(value) -> bool:
    """True for an input the SDK sent to the engine marked secret (its wire-format wrapper)."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def reveal(value):
    return value["value"] if is_secret_input(value) else value


@dataclass(frozen=True)
class SeenOptions:
    """The resource options the engine would get (the mocks' own records leave them out)."""

    ignore_changes: tuple[str, ...]
    dependencies: tuple[str, ...]  # URNs


class FleetMocks(pulumi.runtime.Mocks):
    """Answers like AWS would, with predictable ids and public IPs from TEST-NET-3."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        self.options: dict[str, SeenOptions] = {}  # resource name -> options

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            outputs["publicIp"] = f"203.0.113.{10 + sum(r.typ == args.typ for r in self.resources)}"
            outputs["arn"] = f"arn:aws:ec2:{REGION}:123456789012:instance/i-{args.name}"
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = MOCK_TOKEN
        if args.typ == "aws:ec2/keyPair:KeyPair":
            outputs["keyName"] = f"{args.name}-0001"
        if args.typ == "aws:s3/bucket:Bucket":
            outputs["bucket"] = f"{args.name}-0001"
            outputs["arn"] = f"arn:aws:s3:::{args.name}-0001"
        if args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            outputs["name"] = f"{args.name}-0001"
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs["latestVersion"] = 1
        if args.typ == "aws:autoscaling/group:Group":
            outputs["name"] = f"{args.name}-0001"
        outputs |= self._tls_outputs(args)
        if args.typ == "aws:ssm/parameter:Parameter":
            outputs["arn"] = f"arn:aws:ssm:{REGION}:{MOCK_ACCOUNT}:parameter{args.inputs['name']}"
        resource_id = f"i-{args.name}" if args.typ == "aws:ec2/instance:Instance" else f"{args.name}-id"
        return resource_id, outputs

    @staticmethod
    def _tls_outputs(args: pulumi.runtime.MockResourceArgs) -> dict:
        if args.typ == "tls:index/privateKey:PrivateKey":
            return {"privateKeyPem": mock_key_pem(args.name), "publicKeyPem": f"public-{args.name}"}
        if args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            return {"certPem": mock_cert_pem(args.name)}
        if args.typ == "tls:index/certRequest:CertRequest":
            return {"certRequestPem": f"-----BEGIN CERTIFICATE REQUEST-----\nmock-{args.name}\n"}
        return {}

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": MOCK_AMI, "architecture": "x86_64", "name": "ubuntu-noble-24.04-amd64-server-20261101"}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": MOCK_VPC}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"id": MOCK_VPC, "ids": list(MOCK_SUBNETS)}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {"id": args.args["id"], "vpcId": MOCK_VPC}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            arn = f"arn:aws:iam::{MOCK_ACCOUNT}:user/deployer"
            return {"id": MOCK_ACCOUNT, "accountId": MOCK_ACCOUNT, "arn": arn, "userId": "AIDAMOCK"}
        return {}


class RecordingMonitor(MockMonitor):
    """Pulumi's mock monitor, also noting each registration's ignore_changes and dependencies."""

    def RegisterResource(self, request):
        self.mocks.options[request.name] = SeenOptions(tuple(request.ignoreChanges), tuple(request.dependencies))
        return super().RegisterResource(request)


@dataclass
class ProgramRun:
    mocks: FleetMocks
    namespace: dict  # the program's globals: settings, nodes, security, ...
    outputs: dict = field(default_factory=dict)  # stack outputs, resolved
    secret_outputs: set = field(default_factory=set)  # names of outputs marked secret

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.mocks.resources if r.typ == typ]

    def types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for resource in self.mocks.resources:
            counts[resource.typ] = counts.get(resource.typ, 0) + 1
        return counts


LAST_MOCKS: list[FleetMocks] = []  # the latest run's mocks, also when the program raised


def configure(config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> FleetMocks:
    """Fresh mocks, a fresh root stack and exactly `config` (short keys mean this project)."""
    mocks = FleetMocks()
    LAST_MOCKS[:] = [mocks]
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=False, monitor=RecordingMonitor(mocks))
    full = {key if ":" in key else f"{PROJECT}:{key}": value for key, value in config.items()}
    pulumi.runtime.set_all_config(full, [k if ":" in k else f"{PROJECT}:{k}" for k in secret_keys])
    return mocks


def run_program(config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> ProgramRun:
    """Run infra/__main__.py to completion; returns what it declared and exported."""
    run = ProgramRun(configure(config, secret_keys), {})

    @pulumi.runtime.test
    def program():
        run.namespace = runpy.run_path(str(INFRA_DIR), run_name="__main__")
        exported = runtime_settings.get_root_resource().outputs
        names = sorted(exported)
        values = [pulumi.Output.from_input(exported[name]) for name in names]
        secrets = [pulumi.Output.from_input(value.is_secret()) for value in values]

        def record(resolved):
            run.outputs = dict(zip(names, resolved[: len(names)], strict=True))
            run.secret_outputs = {name for name, secret in zip(names, resolved[len(names) :], strict=True) if secret}

        return pulumi.Output.all(*values, *secrets).apply(record)

    program()
    return run
