"""The fleet's invariants as pulumi-policy resource policies (infra/README.md, "Policy pack").

Every policy takes the resource's inputs as the engine sends them (camelCase keys, numbers as
floats, secrets already unwrapped) and reports one violation per broken rule. The ingress and
SSH policies read the client and admin CIDRs from the pack's config (`--policy-pack-config`).
"""

from __future__ import annotations

import ipaddress
import re

from pulumi_policy import PolicyConfigSchema, ResourceValidationPolicy
from user_data import HOSTS, INSTANCE, TEMPLATE, env_values, files, user_data

GROUP = "aws:autoscaling/group:Group"
VOLUME = "aws:ebs/volume:Volume"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
TAGGED = {
    INSTANCE,
    TEMPLATE,
    GROUP,
    VOLUME,
    SECURITY_GROUP,
    INGRESS_RULE,
    EGRESS_RULE,
    "aws:ec2/keyPair:KeyPair",
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketObjectv2:BucketObjectv2",
    "aws:iam/role:Role",
    "aws:iam/instanceProfile:InstanceProfile",
    "aws:ssm/parameter:Parameter",
}
FALLBACK_PREFIX = 16  # without configured CIDRs: never wider than config.py's WIDE_PREFIX_LENGTH
SSH = 22
EGRESS_PORTS = (80, 443)  # infra/security.py EGRESS_PORTS
ALL_PROTOCOLS = ("-1", "all")
# Secrets that must never be in user-data, nor in any file it writes: anyone with
# ec2:DescribeInstanceAttribute, or IMDS on the host, reads it. Hosts fetch secrets from SSM.
SECRET_PATTERNS = {
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]", re.IGNORECASE),
    "the worker token (WORKER_TOKEN=<value>)": re.compile(r"\bWORKER_TOKEN\s*=\s*\S"),
    "a bearer token": re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    # KEY=value or key: value where the key ends in token/password/secret and the value is long
    # enough to be one (a path is not: WORKER_TOKEN_FILE=/etc/... ends in _FILE).
    "a token-looking value": re.compile(
        r"(?i)(?<![a-z0-9])(?:[a-z0-9]+[_-])*(?:token|password|passwd|secret)\s*[=:]\s*[\"']?[A-Za-z0-9._~+=-]{16,}"
    ),
}
# Worker ports carry the token and every image: in the cloud, always TLS (infra/userdata.py's env).
TLS_VARIABLES = ("WORKER_TLS_CERT", "WORKER_TLS_KEY")
CIDR_CONFIG = PolicyConfigSchema(
    properties={"clientCidr": {"type": "string"}, "adminCidr": {"type": "string"}, "egressPorts": {"type": "array"}}
)


def _num(value) -> int | None:
    return None if value is None else int(float(value))


def _truthy(value) -> bool:
    return value is True or value == "true"


def check_imds(resource_type: str, props, report) -> None:
    if resource_type not in HOSTS:
        return
    options = props.get("metadataOptions") or {}
    if options.get("httpTokens") != "required":
        report(f"IMDSv2 is not enforced: metadataOptions.httpTokens is {options.get('httpTokens')!r}, not 'required'")
    if _num(options.get("httpPutResponseHopLimit")) != 1:
        report(f"IMDS hop limit is {options.get('httpPutResponseHopLimit')!r}, not 1 (containers could reach IMDS)")


def _volumes(resource_type: str, props) -> list[tuple[str, object]]:
    if resource_type == INSTANCE:
        root = props.get("rootBlockDevice") or {}
        extra = props.get("ebsBlockDevices") or []
        return [("root volume", root.get("encrypted"))] + [
            (f"EBS volume {d.get('deviceName')}", d.get("encrypted")) for d in extra
        ]
    if resource_type == TEMPLATE:
        mappings = [m for m in props.get("blockDeviceMappings") or [] if m.get("ebs") is not None]
        if not mappings:
            return [("root volume (no block device mapping: the AMI's unencrypted default)", None)]
        return [(f"volume {m.get('deviceName')}", m["ebs"].get("encrypted")) for m in mappings]
    if resource_type == VOLUME:
        return [("EBS volume", props.get("encrypted"))]
    return []


def check_encryption(resource_type: str, props, report) -> None:
    for what, encrypted in _volumes(resource_type, props):
        if not _truthy(encrypted):
            report(f"{what} is not encrypted (encrypted={encrypted!r})")


def _rules(resource_type: str, props, direction: str) -> list[dict]:
    """Each rule as {cidrs, protocol, from, to}, whichever of the four AWS shapes declared it."""
    if resource_type == (INGRESS_RULE if direction == "ingress" else EGRESS_RULE):
        cidrs = [c for c in (props.get("cidrIpv4"), props.get("cidrIpv6")) if c]
        return [
            {
                "cidrs": cidrs,
                "protocol": props.get("ipProtocol"),
                "from": props.get("fromPort"),
                "to": props.get("toPort"),
            }
        ]
    if resource_type == SG_RULE and props.get("type") == direction:
        inline = [props]
    elif resource_type == SECURITY_GROUP:
        inline = props.get(direction) or []
    else:
        return []
    return [
        {
            "cidrs": list(rule.get("cidrBlocks") or []) + list(rule.get("ipv6CidrBlocks") or []),
            "protocol": rule.get("protocol"),
            "from": rule.get("fromPort"),
            "to": rule.get("toPort"),
        }
        for rule in inline
    ]


def _covers(rule: dict, port: int) -> bool:
    if str(rule["protocol"]).lower() in ALL_PROTOCOLS:
        return True
    low, high = _num(rule["from"]), _num(rule["to"])
    return low is not None and high is not None and low <= port <= high


def _within(cidr: str, allowed: list[str]) -> bool:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    if network.version != 4:
        return False
    if not allowed:
        return network.prefixlen >= FALLBACK_PREFIX
    return any(network.subnet_of(ipaddress.ip_network(a, strict=False)) for a in allowed)


def check_ingress(resource_type: str, props, config, report) -> None:
    allowed = [c for c in (config.get("clientCidr"), config.get("adminCidr")) if c]
    for rule in _rules(resource_type, props, "ingress"):
        for cidr in rule["cidrs"]:
            if not _within(cidr, allowed):
                limit = " or ".join(allowed) if allowed else f"/{FALLBACK_PREFIX} (no clientCidr/adminCidr configured)"
                report(f"ingress from {cidr} is wider than {limit}")


def check_ssh(resource_type: str, props, config, report) -> None:
    admin = config.get("adminCidr")
    for rule in _rules(resource_type, props, "ingress"):
        if not _covers(rule, SSH):
            continue
        for cidr in rule["cidrs"]:
            if not admin:
                report(f"SSH (port 22) is open to {cidr} but no adminCidr is configured")
            elif not _within(cidr, [admin]):
                report(f"SSH (port 22) is open to {cidr}, outside the admin CIDR {admin}")


def check_egress(resource_type: str, props, config, report) -> None:
    ports = {int(p) for p in config.get("egressPorts") or EGRESS_PORTS}
    for rule in _rules(resource_type, props, "egress"):
        low, high = _num(rule["from"]), _num(rule["to"])
        tcp = str(rule["protocol"]).lower() in ("tcp", "6")
        if not tcp or low != high or low not in ports:
            report(
                f"egress {rule['protocol']} {low}-{high} to {', '.join(rule['cidrs']) or 'a group'}: "
                f"only TCP to ports {sorted(ports)} is allowed"
            )


def check_user_data(resource_type: str, props, report) -> None:
    text = user_data(resource_type, props)
    for where, content in {"user-data": text, **files(text)}.items():
        if content is None:
            report(f"user-data file {where} does not decode, so it cannot be checked for secrets")
            continue
        for what, pattern in SECRET_PATTERNS.items():
            if pattern.search(content):
                report(
                    f"{where} contains {what}" if where == "user-data" else f"user-data file {where} contains {what}"
                )


def _worker_envs(text: str) -> dict[str, dict[str, str]]:
    """path -> variables of every env file the user-data writes for a worker (one sets WORKER_PORT)."""
    envs = {path: env_values(content) for path, content in files(text).items() if content is not None}
    return {path: values for path, values in envs.items() if "WORKER_PORT" in values}


def check_worker_tls(resource_type: str, props, report) -> None:
    if resource_type not in HOSTS:
        return
    tags = props.get("tags") or {}
    envs = _worker_envs(user_data(resource_type, props))
    if not envs and str(tags.get("Role", "")).startswith("worker-"):
        report(f"{tags['Role']} host: no worker env file (WORKER_PORT=) in its user-data, so TLS cannot be shown")
    for path, values in sorted(envs.items()):
        missing = [name for name in TLS_VARIABLES if not values.get(name)]
        if missing:
            report(f"{path} sets no {' or '.join(missing)}: the worker port speaks plain HTTP (workerTls: false?)")


def _tags(resource_type: str, props) -> list[tuple[str, dict]]:
    if resource_type == GROUP:
        return [("tags", {t.get("key"): t.get("value") for t in props.get("tags") or []})]
    found = [("tags", dict(props.get("tags") or {}))]
    if resource_type == TEMPLATE:
        found += [
            (f"tagSpecifications[{s.get('resourceType')}]", dict(s.get("tags") or {}))
            for s in props.get("tagSpecifications") or []
        ]
    return found


def check_tags(resource_type: str, props, report) -> None:
    if resource_type not in TAGGED:
        return
    required = ("Project", "Stack", "Role") if resource_type in (*HOSTS, GROUP) else ("Project", "Stack")
    for where, tags in _tags(resource_type, props):
        missing = [key for key in required if not tags.get(key)]
        if missing:
            report(f"{where} lacks {', '.join(missing)}")


def _policy(name: str, description: str, check, configured: bool = False) -> ResourceValidationPolicy:
    if configured:

        def validate(args, report):
            check(args.resource_type, args.props, args.get_config() or {}, report)

    else:

        def validate(args, report):
            check(args.resource_type, args.props, report)

    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, config_schema=CIDR_CONFIG if configured else None
    )


POLICIES = [
    _policy("imdsv2-hop-limit-1", "Instances and launch templates require IMDSv2 tokens with hop limit 1.", check_imds),
    _policy(
        "encrypted-volumes",
        "Every EBS volume (instance root, template mapping, volume) is encrypted.",
        check_encryption,
    ),
    _policy(
        "ingress-within-cidrs", "No ingress wider than the configured clientCidr and adminCidr.", check_ingress, True
    ),
    _policy("ssh-only-from-admin", "Port 22 is open only to the configured adminCidr.", check_ssh, True),
    _policy("egress-limited", "Egress only TCP to the first boot's ports (80, 443 by default).", check_egress, True),
    _policy(
        "no-secrets-in-user-data",
        "No private key, AWS key, worker token or token-looking value in user-data or the files it writes.",
        check_user_data,
    ),
    _policy(
        "tls-on-worker-ports",
        "Every worker's env sets WORKER_TLS_CERT and WORKER_TLS_KEY (TLS on the worker port, workerTls: true).",
        check_worker_tls,
    ),
    _policy("required-tags", "Project and Stack tags everywhere; Role on instances, templates and groups.", check_tags),
]
