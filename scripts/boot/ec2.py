"""EC2 in the boot test's moto stand-in: one running instance tagged as infra/ tags a worker node,
so `fleet status` (DescribeInstances, DescribeInstanceStatus) finds the booted container. Run in
the private namespace; prints the instance id:

    python -m scripts.boot.ec2 URL REGION NAME ROLE PROJECT STACK
"""

from __future__ import annotations

import sys


def run_tagged_instance(url: str, region: str, name: str, role: str, project: str, stack: str) -> str:
    import boto3

    ec2 = boto3.client(
        "ec2", region_name=region, endpoint_url=url, aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    image = ec2.describe_images()["Images"][0]["ImageId"]  # any image moto knows in the region
    tags = [{"Key": "Name", "Value": name}, {"Key": "Role", "Value": role}]
    tags += [{"Key": "Project", "Value": project}, {"Key": "Stack", "Value": stack}]
    reservation = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return reservation["Instances"][0]["InstanceId"]


def main(argv: list[str] | None = None) -> int:
    url, region, name, role, project, stack = argv if argv is not None else sys.argv[1:]
    print(run_tagged_instance(url, region, name, role, project, stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
