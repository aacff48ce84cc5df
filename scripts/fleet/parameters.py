"""The stack's secrets in SSM Parameter Store (infra writes them, hosts fetch them): read one,
overwrite one keeping its type and KMS key. No message here ever holds a parameter's value."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from scripts.fleet.aws import aws_error, client
from scripts.fleet.config import FleetConfig


def ssm_client(config: FleetConfig):
    return client(config, "ssm")


def get_value(client, name: str) -> str:
    """The parameter's value, decrypted."""
    try:
        return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except (BotoCoreError, ClientError) as exc:
        raise aws_error(f"GetParameter {name}", exc) from None


def put_value(client, name: str, value: str) -> None:
    """Overwrite a SecureString, with the KMS key it already has (a put without KeyId would
    move it to the account's default key, which the instance profiles may not decrypt with)."""
    try:
        found = client.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
        key = {"KeyId": found[0]["KeyId"]} if found and found[0].get("KeyId") else {}
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True, **key)
    except (BotoCoreError, ClientError) as exc:
        raise aws_error(f"PutParameter {name}", exc) from None
