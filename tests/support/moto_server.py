"""A real moto server on a free loopback port, and boto3 clients pointed at it with dummy keys.

`python -m tests.support.moto_server ARGS` runs moto's own server with one change (see
`scope_ssm_by_parameter`): with IAM enforcement on, SSM calls are authorised against each
parameter's ARN, as AWS does, instead of moto's "*".
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import requests

from scripts.testkit.procs import RunningProcess, free_port, spawn_logged, wait_started

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
# Dummy keys: moto accepts any; they also keep boto3 from looking further (or off-host) for keys.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def aws_env(endpoint_url: str | None, credentials: bool = True) -> dict[str, str]:
    """Environment for a process that talks to the moto server and nothing else.

    The instance-metadata lookup is disabled so a process without keys never tries the
    link-local metadata address; config files point nowhere so the developer's real keys are
    never read.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key not in ("ECS_CONTAINER_METADATA_URI",)
    }
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    if credentials:
        env.update(DUMMY_CREDENTIALS)
    return env


def point_boto3_at(endpoint_url: str, monkeypatch, credentials: bool = True) -> None:
    """This process's AWS_* variables replaced by aws_env's, so its own boto3 talks to the moto
    server only (monkeypatch restores them after the test)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in aws_env(endpoint_url, credentials).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


@dataclass
class MotoServer:
    process: RunningProcess
    url: str

    def ec2(self):
        return boto3.client(
            "ec2",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def client(self, service: str, **keys):
        """A boto3 client for `service`; dummy keys unless `aws_access_key_id`/... are given."""
        keys = keys or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client(service, region_name=REGION, endpoint_url=self.url, **keys)

    def iam_user(self, name: str, policy: dict | str) -> dict[str, str]:
        """A new IAM user allowed by `policy` (a document, or its JSON); its access key as client keywords."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        document = policy if isinstance(policy, str) else json.dumps(policy)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=document)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint), so tests do not see each other's."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def enforce_iam(self, on: bool = True) -> None:
        """From now on every request must be signed by a known key and allowed by its policies
        (moto's `INITIAL_NO_AUTH_ACTION_COUNT`, set at run time through its reset-auth endpoint)."""
        count = b"0" if on else b"inf"
        requests.post(f"{self.url}/moto-api/reset-auth", data=count, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.stop()


def start_moto_server(tmp_dir: Path, ssm_arns: bool = False) -> MotoServer:
    """`ssm_arns`: run through this module so IAM checks SSM calls per parameter ARN."""
    port = free_port()
    module = "tests.support.moto_server" if ssm_arns else "moto.server"
    log_path = tmp_dir / f"moto-{port}.log"
    proc = spawn_logged(
        [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)], log_path, ROOT, aws_env(None)
    )
    running = RunningProcess(proc, log_path, f"http://127.0.0.1:{port}")
    wait_started(running, f"{running.url}/moto-api/", "moto server failed to start", timeout=60)
    return MotoServer(running, running.url)


def ubuntu_ami(ec2) -> str:
    """An image id moto knows, preferring an Ubuntu one (moto ships a default image list)."""
    images = ec2.describe_images(Owners=["099720109477"]).get("Images") or ec2.describe_images()["Images"]
    return images[0]["ImageId"]


def run_tagged_instance(ec2, name: str, role: str, project: str, stack: str) -> str:
    """One instance tagged the way infra/ tags worker nodes; returns its id."""
    tags = [
        {"Key": "Name", "Value": name},
        {"Key": "Project", "Value": project},
        {"Key": "Stack", "Value": stack},
        {"Key": "Role", "Value": role},
    ]
    reservation = ec2.run_instances(
        ImageId=ubuntu_ami(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return reservation["Instances"][0]["InstanceId"]


def ssm_parameter_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def scope_ssm_by_parameter() -> None:
    """moto authorises every SSM call against resource "*", so a policy scoped to parameter ARNs
    (the instance profiles') would deny everything; AWS checks each named parameter's ARN."""
    from moto.ssm.responses import SimpleSystemManagerResponse

    authorize = SimpleSystemManagerResponse._authenticate_and_authorize_normal_action

    def per_parameter(self, resource: str = "*") -> None:
        names = self._get_param("Names") or [self._get_param("Name")]
        arns = [ssm_parameter_arn(self.region, self.current_account, n) for n in names if n] or [resource]
        for arn in arns:
            authorize(self, arn)

    SimpleSystemManagerResponse._authenticate_and_authorize_normal_action = per_parameter


if __name__ == "__main__":
    from moto.server import main

    scope_ssm_by_parameter()
    main()
