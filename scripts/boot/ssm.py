"""Parameter Store in the boot test's moto stand-in: the stage's parameters, and changing one later.

Parameters travel as a JSON file {name: [type, value]} (0600, in the stage's own folder), never
on a command line. To change one while a container runs (a token rotation), from the namespace:

    python -m scripts.boot.ssm URL REGION PARAMETERS_JSON     # put each, Overwrite=True
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def client(url: str, region: str):
    import boto3

    return boto3.client(
        "ssm", region_name=region, endpoint_url=url, aws_access_key_id="setup", aws_secret_access_key="setup"
    )


def write_parameters(path: Path, parameters: dict[str, tuple[str, str]]) -> Path:
    path.touch(mode=0o600)
    path.write_text(json.dumps({name: list(kind_value) for name, kind_value in parameters.items()}))
    return path


def put_all(ssm, path: str) -> None:
    with open(path) as source:
        for name, (kind, value) in json.load(source).items():
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


def main(argv: list[str] | None = None) -> int:
    url, region, path = argv if argv is not None else sys.argv[1:]
    put_all(client(url, region), path)
    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
