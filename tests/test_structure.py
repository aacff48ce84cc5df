"""Dependencies run one way (issue 14): scripts/ and the components never import tests/, test
modules never import other test modules, and nothing edits sys.path (pyproject installs them).
And the docs name only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from scripts.testkit.procs import ROOT

COMPONENTS = ("coordinator", "infra", "scripts", "stripes", "worker-python")


def python_files(*folders: str) -> list[Path]:
    return [
        path
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if ".venv" not in path.parts and "node_modules" not in path.parts
    ]


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_component_or_script_imports_tests():
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in imports(p) if n.split(".")[0] == "tests")
        for p in python_files(*COMPONENTS)
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_no_test_module_imports_another_test_module():
    offenders = {}
    for path in python_files("tests"):
        found = sorted(n for n in imports(path) if any(part.startswith("test_") for part in n.split(".")))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders


def test_nothing_edits_sys_path():
    edits = ("sys.path." + "insert", "sys.path." + "append")  # split, so this file does not match
    assert not [
        str(p.relative_to(ROOT))
        for p in python_files(*COMPONENTS, "tests")
        if any(edit in p.read_text() for edit in edits)
    ]


# Each behaviour has one home: a test module sits in the folder of the component it checks.
TEST_FOLDERS = ("contract", "coordinator", "fleet", "infra", "page", "reliability", "workers")


def test_tests_are_laid_out_by_component():
    misplaced = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if p.relative_to(ROOT / "tests").parts[0] not in TEST_FOLDERS and p.name != "test_structure.py"
    ]
    assert not misplaced
    assert all((ROOT / "tests" / folder / "__init__.py").is_file() for folder in TEST_FOLDERS)


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
