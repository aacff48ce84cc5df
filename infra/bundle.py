"""What a worker host runs: the files shipped per role, their build id and a reproducible tarball.

Pure and dependency-free, shared by the Pulumi program (user-data) and the fleet tool (deploys):
both must agree byte for byte on what a release is, or a redeploy would not match `pulumi up`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

from stripes.roles import ROLE_SPECS, ROLES

REPO_ROOT = Path(__file__).resolve().parents[1]

# Never shipped: tests, installed deps, docs, container files, caches.
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "node_modules", "__pycache__", ".pytest_cache", "coverage", ".nyc_output", ".venv", "venv"}
)
EXCLUDED_NAMES = frozenset({"Dockerfile", ".dockerignore", ".gitignore", ".npmrc", ".env", ".DS_Store"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".md", ".log")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def is_shipped(relative_path: str) -> bool:
    """True when a path (relative to the worker folder, '/'-separated) belongs on a host."""
    parts = PurePosixPath(relative_path).parts
    if any(part in EXCLUDED_DIRS for part in parts[:-1]):
        return False
    name = parts[-1]
    if name in EXCLUDED_NAMES or name.startswith("Dockerfile") or name.endswith(EXCLUDED_SUFFIXES):
        return False
    if name.upper().startswith("README"):
        return False
    is_test = name.startswith("test_") and name.endswith(".py") or name.endswith((".test.js", ".spec.js"))
    return not is_test


def _git_tracked(folder: Path, root: Path) -> list[str] | None:
    """Paths under `folder` tracked by git (relative to it), or None when git cannot say."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--", str(folder.relative_to(root))],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if result.returncode != 0:
        return None
    prefix = folder.relative_to(root).as_posix() + "/"
    paths = [p.decode() for p in result.stdout.split(b"\0") if p]
    return [p[len(prefix) :] for p in paths if p.startswith(prefix)]


def _walk(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(".")]
        for name in filenames:
            found.append((Path(dirpath) / name).relative_to(folder).as_posix())
    return found


def bundle_files(role: str, root: Path | None = None) -> dict[str, bytes]:
    """Relative path -> content of every file shipped to a host for `role`.

    Uses `git ls-files` so untracked junk never ships; falls back to walking the folder (same
    exclusions) outside a git checkout, or while the worker has no tracked files yet.
    """
    _check_role(role)
    root = Path(root if root is not None else REPO_ROOT).resolve()
    folder = root / role
    if not folder.is_dir():
        raise FileNotFoundError(f"worker folder {folder} does not exist")
    candidates = _git_tracked(folder, root) or _walk(folder)
    files: dict[str, bytes] = {}
    for relative in sorted(candidates):
        path = folder / relative
        # A tracked file deleted in the working tree, or a symlink, is not shipped.
        if not is_shipped(relative) or path.is_symlink() or not path.is_file():
            continue
        files[relative] = path.read_bytes()
    missing = [name for name in ROLE_SPECS[role].required_files if name not in files]
    if missing:
        raise FileNotFoundError(f"{role} bundle lacks {', '.join(missing)} (looked in {folder})")
    return files


def build_id(files: dict[str, bytes]) -> str:
    """First 12 hex digits of sha256 over the sorted (path, content) pairs: the release name."""
    digest = hashlib.sha256()
    for path in sorted(files):
        content = files[path]
        digest.update(path.encode() + b"\0" + str(len(content)).encode() + b"\0")
        digest.update(content)
    return digest.hexdigest()[:12]


def tarball(files: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz: sorted entries, mtime 0, owner 0:0, mode 0644, no gzip timestamp."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            content = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def deps_fingerprint(role: str, files: dict[str, bytes]) -> str:
    """sha256 hex of the role's pinned-dependency manifest (requirements.txt / package-lock.json)."""
    _check_role(role)
    manifest = ROLE_SPECS[role].deps_manifest
    if manifest not in files:
        raise FileNotFoundError(f"{role} bundle lacks {manifest}")
    return hashlib.sha256(files[manifest]).hexdigest()
