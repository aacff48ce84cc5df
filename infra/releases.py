"""Where hosts get their worker files: a private S3 bucket, one object per release, read-only access.

The worker source plus package-lock.json is ~26 KB even gzipped, over EC2's 16 KB user-data
limit, so user-data carries only the object's key and sha256 and the host downloads it.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Optional

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
    def of(cls, role: str, files: dict[str, bytes]) -> "Release":
        archive = tarball(files)
        build = build_id(files)
        return cls(role=role, build=build, key=f"{role}/{build}.tar.gz",
                   sha256=hashlib.sha256(archive).hexdigest(), archive=archive)


@dataclass
class ReleaseStoreArgs:
    releases: Mapping[str, Release]   # role -> release
    tags: Mapping[str, str] = field(default_factory=dict)


class ReleaseStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    instance_profile_name: pulumi.Output[str]

    def __init__(self, name: str, args: ReleaseStoreArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("htp:infra:ReleaseStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            force_destroy=True,  # build artefacts only: `pulumi destroy` must not stall on them
            tags=tags,
            opts=child,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=bucket.id,
            block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True,
            opts=child,
        )
        objects = [
            aws.s3.BucketObjectv2(
                f"{name}-{role}",
                bucket=bucket.id,
                key=release.key,
                content_base64=base64.b64encode(release.archive).decode(),
                content_type="application/gzip",
                server_side_encryption="AES256",
                tags=tags,
                opts=child,
            )
            for role, release in sorted(args.releases.items())
        ]
        role_resource = aws.iam.Role(
            f"{name}-host-role",
            description="Worker hosts: read their release from the release bucket, nothing else",
            assume_role_policy=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                               "Principal": {"Service": "ec2.amazonaws.com"}}],
            }),
            tags=tags,
            opts=child,
        )
        read_policy = aws.iam.RolePolicy(
            f"{name}-read-releases",
            role=role_resource.id,
            policy=bucket.arn.apply(lambda arn: json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                               "Resource": [f"{arn}/{role}/*" for role in sorted(args.releases)]}],
            })),
            opts=child,
        )
        # Instances wait for the profile; the profile waits until the releases are readable.
        profile = aws.iam.InstanceProfile(
            f"{name}-host-profile", role=role_resource.name, tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[read_policy, *objects]))
        self.bucket_name = bucket.bucket
        self.instance_profile_name = profile.name
        self.register_outputs({"bucket_name": self.bucket_name,
                               "instance_profile_name": self.instance_profile_name})
