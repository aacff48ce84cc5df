"""The docs name the tests that prove their claims; every name they give must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (
    "SECURITY.md",
    "README.md",
    "infra/README.md",
    "coordinator/README.md",
    "scripts/README.md",
    "tests/contract/README.md",
    "worker-python/README.md",
    "worker-nodejs/README.md",
)
# `tests/x/test_y.py::test_z[param]` names a file and a test; a bare `::test_w` after it, the same file.
REFERENCE = re.compile(r"(?:(tests/[\w/]+\.py)|(?<![\w/.])(test_\w+\.py))?::(test_\w+)")


def references(text: str) -> list[tuple[str, str]]:
    """(test file, test name) for every reference, a bare `::name` taking the last file named."""
    found, last = [], None
    for match in REFERENCE.finditer(text):
        path, short, name = match.groups()
        if path or short:
            last = path or short
        if last is not None:
            found.append((last, name))
    return found


def resolve(name: str) -> Path | None:
    if name.startswith("tests/"):
        return ROOT / name
    matches = sorted((ROOT / "tests").rglob(name))
    return matches[0] if len(matches) == 1 else None


def test_the_reference_pattern_reads_paths_short_names_and_bare_names():
    text = "`tests/a/test_b.py::test_c`, `::test_d`; `test_e.py::test_f[x]`"
    assert references(text) == [
        ("tests/a/test_b.py", "test_c"),
        ("tests/a/test_b.py", "test_d"),
        ("test_e.py", "test_f"),
    ]


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_doc_names_exists(doc):
    missing = []
    for file_name, test_name in references((ROOT / doc).read_text()):
        path = resolve(file_name)
        if path is None or not path.exists():
            missing.append(f"{file_name} (no such single test file)")
        elif not re.search(rf"^\s*(?:async )?def {test_name}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file_name}::{test_name}")
    assert not missing, f"{doc} names tests that do not exist: {sorted(set(missing))}"
