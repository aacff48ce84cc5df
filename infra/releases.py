"""Where hosts get their worker files: a private S3 bucket, one object per release, read-only access.

The worker source plus package-lock.json is ~26 KB even gzipped, over EC2's 16 KB user-data
limit, so user-data carries only the object's key and sha256 and the host downloads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.bundle import build_id, tarball


@dataclass(frozen=True)
class Release:
    """One role's release: what the host fetches and how it checks it."""

    role: str
    build: str
    key: str
    sha256: str
    archive: bytes

    @classmethod
    def of(cls, role: str, files: dict[str, bytes]) -> Release:
        archive = tarball(files)
        build = build_id(files)
        return cls(
            role=role,
            build=build,
            key=f"{role}/{build}.tar.gz",
            sha256=hashlib.sha256(archive).hexdigest(),
            archive=archive,
        )


@dataclass
class ReleaseStoreArgs:
    releases: Mapping[str, Release]  # role -> release
    tags: Mapping[str, str] = field(default_factory=dict)
    # Every host role also gets this policy (the stack's SSM secrets: infra/fleet_secrets.py).
    secrets_policy: pulumi.Input[str] | None = None


def host_read_policy(bucket_arn: str, role: str) -> str:
    """The only permission a role's hosts get: read that role's releases, nothing else."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket_arn}/{role}/*"}],
        }
    )


def tls_only_policy(bucket_arn: str) -> str:
    """Refuse every request to the bucket that does not come over TLS, whoever makes it."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyPlainHttp",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"}}],
    }
)


class ReleaseStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    instance_profile_names: dict[str, pulumi.Output[str]]  # worker role -> its hosts' profile

    def __init__(self, name: str, args: ReleaseStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:ReleaseStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            force_destroy=True,  # build artefacts only: `pulumi destroy` must not stall on them
            tags=tags,
            opts=child,
        )
        private = aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            # S3 refuses concurrent bucket-level changes; a Deny policy is never "public".
            opts=pulumi.ResourceOptions(parent=self, depends_on=[private]),
        )
        self.bucket_name = bucket.bucket
        self.instance_profile_names = {}
        for role, release in sorted(args.releases.items()):
            obj = aws.s3.BucketObjectv2(
                f"{name}-{role}",
                bucket=bucket.id,
                key=release.key,
                content_base64=base64.b64encode(release.archive).decode(),
                content_type="application/gzip",
                server_side_encryption="AES256",
                tags=tags,
                opts=child,
            )
            self.instance_profile_names[role] = self._host_profile(name, role, bucket, obj, tags, args.secrets_policy)
        self.register_outputs({"bucket_name": self.bucket_name, "instance_profile_names": self.instance_profile_names})

    def _host_profile(
        self,
        name: str,
        role: str,
        bucket: aws.s3.Bucket,
        release: aws.s3.BucketObjectv2,
        tags: dict,
        secrets_policy: pulumi.Input[str] | None,
    ) -> pulumi.Output[str]:
        """One IAM role + instance profile per worker role: that role's releases and the stack's secrets only."""
        child = pulumi.ResourceOptions(parent=self)
        host_role = aws.iam.Role(
            f"{name}-{role}-host-role",
            description=f"{role} hosts: read {role} releases and the stack's worker secrets, nothing else",
            assume_role_policy=EC2_TRUST,
            tags={**tags, "Role": role},
            opts=child,
        )
        read_policy = aws.iam.RolePolicy(
            f"{name}-{role}-read-release",
            role=host_role.id,
            policy=bucket.arn.apply(lambda arn: host_read_policy(arn, role)),
            opts=child,
        )
        readable = [read_policy, release]
        if secrets_policy is not None:
            readable.append(
                aws.iam.RolePolicy(f"{name}-{role}-read-secrets", role=host_role.id, policy=secrets_policy, opts=child)
            )
        # Instances wait for the profile; the profile waits until the release and the secrets are readable.
        profile = aws.iam.InstanceProfile(
            f"{name}-{role}-host-profile",
            role=host_role.name,
            tags={**tags, "Role": role},
            opts=pulumi.ResourceOptions(parent=self, depends_on=readable),
        )
        return profile.name
