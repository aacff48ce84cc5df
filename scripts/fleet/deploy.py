"""Redeploy a worker's source to its host, with a health-checked switch and automatic rollback.

Layout on the host: the one in stripes/roles.py, which infra's user-data also builds:
  <base>/releases/<build_id>/   <base>/current -> releases/<build_id>   <base>/venv (python)
  <env file> (WORKER_BUILD=...)  systemd unit <role>.service
All paths sit under `remote_root` ('/' in production) so tests can use a temporary tree.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import sys
import time
from dataclasses import dataclass

import paramiko

from infra.bundle import build_id, bundle_files, deps_fingerprint, tarball
from scripts.fleet import ssh
from scripts.fleet.config import REPO_ROOT, FleetConfig, Worker
from scripts.fleet.errors import ROLLBACK_FAILED, ROLLED_BACK, FleetError
from scripts.fleet.health import check_health
from stripes.roles import ROLE_SPECS, RoleSpec, under

STAGING_DIR = ".hdtp-staging"  # in the SSH user's home, so no sudo is needed to upload
BUILD_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what may go into the env file and paths


@dataclass(frozen=True)
class Bundle:
    role: str
    files: dict
    build_id: str
    deps: str
    tarball: bytes


def make_bundle(config: FleetConfig, role: str) -> Bundle:
    try:
        files = bundle_files(role, config.source_root or REPO_ROOT)
    except (FileNotFoundError, ValueError) as exc:
        raise FleetError(f"cannot bundle {role}: {exc}") from None
    return Bundle(role, files, build_id(files), deps_fingerprint(role, files), tarball(files))


@dataclass(frozen=True)
class HostPaths:
    """The registry's host layout for one role, moved under the config's remote root."""

    spec: RoleSpec
    root: str

    @classmethod
    def of(cls, config: FleetConfig, role: str) -> HostPaths:
        return cls(ROLE_SPECS[role], config.remote_root)

    @property
    def base(self) -> str:
        return under(self.root, self.spec.base_dir)

    @property
    def env_file(self) -> str:
        return under(self.root, self.spec.env_file)

    @property
    def current(self) -> str:
        return under(self.root, self.spec.current_dir)

    def release(self, build: str) -> str:
        return under(self.root, self.spec.release_dir(build))

    def install_steps(self, release: str) -> str:
        return "\n".join(self.spec.install_steps(release, self.root))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Deployer:
    """One worker's redeploy over one SSH session."""

    def __init__(
        self, config: FleetConfig, worker: Worker, bundle: Bundle, client, health_timeout: float, command_timeout: float
    ):
        self.config, self.worker, self.bundle, self.client = config, worker, bundle, client
        self.paths = HostPaths.of(config, worker.role)
        self.health_timeout = health_timeout
        self.command_timeout = command_timeout

    def log(self, message: str) -> None:
        _say(f"{self.worker.name}: {message}")

    def root(self, step: str, script: str) -> str:
        """Run `script` as root; FleetError naming `step` and the last error line on failure."""
        code, out, err = ssh.run(self.client, ssh.sudo("set -eu\n" + script), self.command_timeout)
        if code != 0:
            detail = (err.strip() or out.strip() or "no output").splitlines()[-1]
            raise FleetError(f"{step} failed (exit {code}): {detail}")
        return out

    # --- what is there now -------------------------------------------------------------
    def current_release(self) -> tuple[str, str, str | None]:
        """(build id of `current`, WORKER_BUILD in the env file, deps fingerprint or None)."""
        q = shlex.quote
        manifest_name = self.paths.spec.deps_manifest
        manifest = posixpath.join(self.paths.current, manifest_name)
        out = self.root(
            "reading the current release",
            f"""
readlink {q(self.paths.current)} || true
echo "#"
sed -n 's/^WORKER_BUILD=//p' {q(self.paths.env_file)} | tail -n 1
echo "#"
cat {q(manifest)} 2>/dev/null || echo "#missing"
""",
        )
        link, env_build, manifest_text = (out.split("#\n", 2) + ["", ""])[:3]
        current = posixpath.basename(link.strip().rstrip("/"))
        current = current if BUILD_PATTERN.fullmatch(current) else ""
        env_build = env_build.strip() if BUILD_PATTERN.fullmatch(env_build.strip()) else current
        deps = None
        if current and manifest_text.strip() != "#missing":
            deps = deps_fingerprint(self.worker.role, {manifest_name: manifest_text.encode()})
        return current, env_build, deps

    # --- steps ------------------------------------------------------------------------
    def upload(self) -> str:
        try:
            sftp = self.client.open_sftp()
        except (paramiko.SSHException, OSError) as exc:
            raise FleetError(f"cannot open SFTP: {exc}") from None
        try:
            home = sftp.normalize(".")
            staging = posixpath.join(home, STAGING_DIR)
            with contextlib.suppress(OSError):  # already there
                sftp.mkdir(staging, 0o700)
            remote = posixpath.join(staging, f"{self.worker.role}-{self.bundle.build_id}.tar.gz")
            with sftp.open(remote, "wb") as out:
                out.write(self.bundle.tarball)
            return remote
        except (paramiko.SSHException, OSError) as exc:
            raise FleetError(f"upload over SFTP failed: {exc}") from None
        finally:
            sftp.close()

    def unpack(self, staged: str) -> None:
        q = shlex.quote
        release = self.paths.release(self.bundle.build_id)
        self.root(
            "unpacking the release",
            f"""
rm -rf {q(release)}.new
mkdir -p {q(release)}.new
tar -xzf {q(staged)} -C {q(release)}.new --no-same-owner
chmod -R u=rwX,go=rX {q(release)}.new
rm -rf {q(release)}
mv {q(release)}.new {q(release)}
rm -f {q(staged)}
""",
        )

    def install_python_deps(self, release: str) -> None:
        self.root("installing Python dependencies", self.paths.install_steps(release))

    def install_deps(self, release: str, previous: str | None, reuse: bool) -> None:
        q = shlex.quote
        if self.paths.spec.runtime == "python":
            if reuse:
                self.log("dependencies unchanged; reusing the shared venv")
                return
            self.log("dependencies changed; installing into the shared venv")
            self.install_python_deps(release)
        elif reuse and previous:
            self.log("dependencies unchanged; copying node_modules from the previous release")
            self.root(
                "copying node_modules",
                f"""
rm -rf {q(release)}/node_modules
if [ -d {q(previous)}/node_modules ]; then
  cp -a {q(previous)}/node_modules {q(release)}/node_modules
else
  {self.paths.install_steps(release)}
fi
""",
            )
        else:
            self.log("dependencies changed; running npm ci")
            self.root("installing Node dependencies", self.paths.install_steps(release))

    def switch(self, build: str, env_build: str) -> None:
        """Point `current` at releases/<build> and WORKER_BUILD at `env_build`, then restart."""
        q = shlex.quote
        env_file = self.paths.env_file
        link_new = self.paths.current + ".new"
        self.root(
            "switching the release",
            f"""
test -d {q(self.paths.release(build))}
if grep -q '^WORKER_BUILD=' {q(env_file)}; then
  sed -i 's/^WORKER_BUILD=.*/WORKER_BUILD={env_build}/' {q(env_file)}
else
  echo 'WORKER_BUILD={env_build}' >> {q(env_file)}
fi
ln -sfn {q("releases/" + build)} {q(link_new)}
mv -T {q(link_new)} {q(self.paths.current)}
""",
        )
        self.root(f"restarting {self.worker.role}", f"systemctl restart {q(self.worker.role)}")

    def prune(self, keep: int, new: str, previous: str) -> None:
        """Delete all but the `keep` newest releases; the new and previous ones always stay."""
        q = shlex.quote
        releases = posixpath.join(self.paths.base, "releases")
        listing = self.root("listing releases", f"ls -1t {q(releases)}")
        names = [n for n in listing.split() if BUILD_PATTERN.fullmatch(n)]
        kept = [new] + ([previous] if previous else [])
        kept += [n for n in names if n not in kept][: max(0, keep - len(kept))]
        stale = [n for n in names if n not in kept]
        if stale:
            self.root("pruning old releases", "rm -rf -- " + " ".join(q(posixpath.join(releases, n)) for n in stale))
            self.log(f"pruned {len(stale)} old release(s): {', '.join(stale)}")

    def wait_healthy(self, build: str) -> str | None:
        """None once /healthz reports `build`, else the last problem seen at the deadline."""
        deadline = time.monotonic() + self.health_timeout
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = check_health(self.worker.url, tls=self.config.tls).problem(self.worker.runtime, build)
            if problem is None:
                return None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return problem

    # --- the whole thing --------------------------------------------------------------
    def deploy(self, force: bool = False, keep: int = 5) -> str:
        """A one-line result; FleetError (starting with the worker's name) when it failed."""
        prefix = f"{self.worker.name}: "
        try:
            return self._deploy(force, keep)
        except FleetError as exc:
            if exc.message.startswith(prefix):
                raise
            raise FleetError(prefix + exc.message, exc.code) from None

    def _deploy(self, force: bool, keep: int) -> str:
        new = self.bundle.build_id
        current, env_build, current_deps = self.current_release()
        if current == new and env_build == new and not force:
            problem = self.wait_healthy(new)
            if problem:
                raise FleetError(f"{self.worker.name}: already at build {new} but not healthy: {problem}")
            return f"{self.worker.name}: already at build {new}, healthy"
        if current == new:
            # The files are already in place (and may be serving): fix WORKER_BUILD and restart.
            self.log(f"release {new} already in place; restarting it")
            self.switch(new, new)
            problem = self.wait_healthy(new)
            if problem:
                raise FleetError(
                    f"{self.worker.name}: build {new} not healthy within {self.health_timeout:g}s: {problem}"
                )
            return f"{self.worker.name}: restarted build {new}, healthy"
        self.log(f"deploying build {new} (current: {current or 'none'})")
        previous = self.paths.release(current) if current else None
        release = self.paths.release(new)
        reuse = current_deps is not None and current_deps == self.bundle.deps
        try:
            self.unpack(self.upload())
            self.install_deps(release, previous, reuse)
        except FleetError as exc:
            kept = f"build {current} still running" if current else "nothing was switched"
            raise FleetError(f"{exc.message}; {kept}", ROLLED_BACK) from None
        failure = None
        try:
            self.switch(new, new)
            failure = self.wait_healthy(new)
            if failure:
                failure = f"build {new} not healthy within {self.health_timeout:g}s: {failure}"
        except FleetError as exc:
            failure = exc.message
        if failure is None:
            self.prune(keep, new, current)
            return f"{self.worker.name}: deployed build {new} (was {current or 'none'}), healthy"
        self.log(f"{failure}; rolling back to {current or 'nothing'}")
        self.rollback(previous, current, env_build, reuse, failure)
        raise FleetError(f"{self.worker.name}: {failure}; rolled back to build {current}, healthy", ROLLED_BACK)

    def rollback(self, previous: str | None, current: str, env_build: str, reuse: bool, failure: str) -> None:
        if not previous:
            raise FleetError(f"{self.worker.name}: {failure}; no previous release to roll back to", ROLLBACK_FAILED)
        try:
            if not reuse and self.paths.spec.runtime == "python":
                self.log("restoring the previous release's dependencies in the shared venv")
                self.install_python_deps(previous)
            self.switch(current, env_build)
            problem = self.wait_healthy(env_build)
        except FleetError as exc:
            problem = exc.message
        if problem:
            raise FleetError(
                f"{self.worker.name}: {failure}; rollback to {current} failed too: {problem}", ROLLBACK_FAILED
            )
        self.log(f"rolled back to build {current}, healthy")


def redeploy(
    config: FleetConfig,
    workers: list[Worker],
    health_timeout: float,
    command_timeout: float,
    force: bool = False,
    keep: int = 5,
) -> list[str]:
    """Deploy to each worker in turn, stopping at the first failure (a rolling deploy)."""
    bundles: dict[str, Bundle] = {}
    done = []
    for worker in workers:
        if worker.role not in bundles:
            bundles[worker.role] = make_bundle(config, worker.role)
        client = ssh.connect(config, worker)
        try:
            deployer = Deployer(config, worker, bundles[worker.role], client, health_timeout, command_timeout)
            done.append(deployer.deploy(force, keep))
            print(done[-1], flush=True)
        finally:
            client.close()
    return done
