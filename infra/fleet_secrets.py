"""The stack's secrets in SSM Parameter Store, and the host permission that reads them (and nothing else).

Names are `/{project}/{stack}/<parameter>` (stripes/roles.py PARAM_*). The hosts fetch them at boot
and every minute (infra/fetch_secrets.py); `fleet rotate-token` rewrites `worker-token`, which is
why Pulumi sets its first value and then leaves it alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from stripes.roles import PARAM_CLIENT_CA, PARAM_TLS_CERT, PARAM_TLS_KEY, PARAM_TOKEN


def host_secrets_policy(prefix: str, *, region: str, account: str, partition: str = "aws") -> str:
    """Read this stack's parameters only (the trailing `/*` keeps /p/dev from matching /p/dev2), and
    decrypt them only through SSM: the SecureStrings use the account's aws/ssm KMS key."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadStackSecrets",
                    "Effect": "Allow",
                    "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                    "Resource": f"arn:{partition}:ssm:{region}:{account}:parameter{prefix}/*",
                },
                {
                    "Sid": "DecryptThroughSsmOnly",
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": f"arn:{partition}:kms:{region}:{account}:key/*",
                    "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"}},
                },
            ],
        }
    )


def stack_secrets_policy(secrets: FleetSecrets, region: str) -> pulumi.Output[str]:
    """host_secrets_policy for the deploying account (the one the hosts run in). It carries the
    parameters as dependencies, so no instance profile (hence no host) exists before they do."""
    caller = aws.get_caller_identity_output()
    return pulumi.Output.all(caller.account_id, caller.arn, secrets.ready).apply(
        lambda ids: host_secrets_policy(secrets.prefix, region=region, account=ids[0], partition=ids[1].split(":")[1])
    )


@dataclass
class FleetSecretsArgs:
    prefix: str  # /{project}/{stack}
    token: pulumi.Input[str]
    tls_key_pem: pulumi.Input[str]
    tls_cert_pem: pulumi.Input[str]
    client_ca_pem: pulumi.Input[str] | None = None  # mutual TLS only
    tags: Mapping[str, str] = field(default_factory=dict)


class FleetSecrets(pulumi.ComponentResource):
    prefix: str
    names: dict[str, str]  # parameter -> full SSM name
    token: pulumi.Output[str]  # secret; the value in state (`pulumi refresh` reads a rotated one)
    ready: pulumi.Output[list]  # resolves once every parameter exists

    def __init__(self, name: str, args: FleetSecretsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:FleetSecrets", name, None, opts)
        self._name, self._args, self.prefix, self.names = name, args, args.prefix, {}
        # Rotation (`fleet rotate-token`) owns the value after the first `pulumi up`.
        token = self._parameter(PARAM_TOKEN, "SecureString", args.token, ignore_value=True)
        made = [
            token,
            self._parameter(PARAM_TLS_KEY, "SecureString", args.tls_key_pem),
            self._parameter(PARAM_TLS_CERT, "String", args.tls_cert_pem),
        ]
        if args.client_ca_pem is not None:
            made.append(self._parameter(PARAM_CLIENT_CA, "String", args.client_ca_pem))
        self.token = pulumi.Output.secret(token.value)
        self.ready = pulumi.Output.all(*[parameter.arn for parameter in made])
        self.register_outputs({"names": self.names})

    def _parameter(
        self, parameter: str, kind: str, value: pulumi.Input[str], ignore_value: bool = False
    ) -> aws.ssm.Parameter:
        full_name = f"{self._args.prefix}/{parameter}"
        self.names[parameter] = full_name
        secure = kind == "SecureString"
        return aws.ssm.Parameter(
            f"{self._name}-{parameter}",
            name=full_name,
            type=kind,
            value=pulumi.Output.secret(value) if secure else value,
            description=f"worker fleet {parameter} (read by the hosts' fetch-worker-secrets)",
            tier="Standard",
            tags=dict(self._args.tags),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["value"] if ignore_value else None),
        )
