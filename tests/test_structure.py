"""Dependencies run one way (issue 14): scripts/ and the components never import tests/, test
modules never import other test modules, and nothing edits sys.path (pyproject installs them)."""

from __future__ import annotations

import ast
from pathlib import Path

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
