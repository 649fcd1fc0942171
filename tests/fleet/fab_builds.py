"""Frontend builds for the `fab` fleet tests: many files, hashed assets, and a next build that changes a few.

Every build's content depends on a salt, so a test's builds share no bytes with another test's (a host
hard-links content it already has from any release: a shared byte would hide a transfer).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.builds import make_build as write_build
from tests.fleet.deployment import Deployment

#: The build's many files: hashed chunks under assets/ (immutable, pooled) and plain pages.
CHUNKS = 150
PAGES = 48
FILE_SIZE = 2048


def _bytes(seed: str, size: int) -> bytes:
    """Deterministic, incompressible bytes (printable, so a file reads as text in a browser)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).hexdigest().encode()
        counter += 1
    return bytes(out[:size])


def _hashed(stem: str, data: bytes, suffix: str) -> str:
    return f"assets/{stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}"


def salted_files(salt: str, version: str = "1", chunks: int = CHUNKS, pages: int = PAGES) -> dict[str, bytes]:
    """index.html, a hashed app bundle, `chunks` hashed chunks, `pages` pages; all content from the salt.

    Builds with the same salt and another version differ in exactly three files: index.html, the app
    bundle (a new hashed name) and the last page.
    """
    app = _bytes(f"{salt}/app/{version}", FILE_SIZE)
    app_path = _hashed("app", app, ".js")
    files = {app_path: app}
    for index in range(chunks):
        chunk = _bytes(f"{salt}/chunk/{index}", FILE_SIZE)
        files[_hashed(f"chunk{index:03d}", chunk, ".js")] = chunk
    for index in range(pages):
        page_version = version if index == pages - 1 else "1"
        files[f"pages/page{index:03d}.html"] = _bytes(f"{salt}/page/{index}/{page_version}", FILE_SIZE)
    files["index.html"] = (f"<!doctype html><title>{salt} v{version}</title>"
                           f'<script type="module" src="/{app_path}"></script>\n').encode()
    return files


def salted_build(directory: Path, salt: str, version: str = "1", chunks: int = CHUNKS, pages: int = PAGES) -> Path:
    """A dist/ folder of salted_files (what was in directory before is removed)."""
    return write_build(directory, salted_files(salt, version, chunks, pages), fresh=True)



def files_of(build: Path) -> dict[str, bytes]:
    return {p.relative_to(build).as_posix(): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()}


def changed_bytes(old: Path, new: Path) -> int:
    """Bytes of the files of `new` that `old` lacks or has with other content."""
    before = files_of(old)
    return sum(len(data) for path, data in files_of(new).items() if before.get(path) != data)


def hashed_assets(build: Path) -> list[str]:
    return sorted(path for path in files_of(build) if path.startswith("assets/"))


def make_git_build(directory: Path, salt: str, tag: str) -> Path:
    """A build inside a git repository whose HEAD is tagged `tag` (what `git describe` labels it)."""
    salted_build(directory, salt, chunks=2, pages=1)
    git = ["git", "-C", str(directory), "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "build"], ["tag", tag]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return directory


@dataclass
class Builds:
    """A test's builds: A, then B with three files changed."""

    a: Path
    b: Path

    @classmethod
    def create(cls, parent: Path, salt: str, **sizes: int) -> Builds:
        return cls(salted_build(parent / f"{salt}-a", salt, "1", **sizes),
                   salted_build(parent / f"{salt}-b", salt, "2", **sizes))


# --- what the user runs and sees ----------------------------------------------------------------------------


def fab_json(deployed: Deployment, *args: str, expect: int = 0, timeout: float = 300) -> Any:
    """`fab TASK ARGS --json`, its exit code checked, its stdout parsed."""
    result = deployed.fab(*args, "--json", timeout=timeout)
    assert result.returncode == expect, f"fab {' '.join(args)} exited {result.returncode}, not {expect}: " \
                                        f"{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def rollout(deployed: Deployment, build: Path, *args: str) -> dict[str, Any]:
    """A successful `fab rollout --build DIR --json`."""
    return dict(fab_json(deployed, "rollout", "--build", str(build), "--timeout", "20", *args))


def release_id(deployed: Deployment, build: Path) -> str:
    """The release id of a build, as `sync-agent manifest` computes it on the controller."""
    from tests.fleet.deployment import BIN

    out = subprocess.run([str(BIN / "sync-agent"), "manifest", "--compact", str(build)], check=True,
                         capture_output=True, text=True).stdout
    return str(json.loads(out)["release_id"])


def assert_fleet_serves(deployed: Deployment, build: Path, hosts: list[str] | None = None) -> None:
    for host in hosts or deployed.web_hosts:
        wrong = deployed.serves_build(host, build)
        assert not wrong, f"{host} does not serve {build.name}: {wrong[:5]}"


def releases_on_disk(deployed: Deployment, host: str) -> list[str]:
    """Names under releases/ on a host (directories, records, partials)."""
    out = deployed.ssh(host, "ls -1 /srv/fleettest/releases/")
    return sorted(out.split())


def status_json(deployed: Deployment) -> tuple[int, list[dict[str, Any]]]:
    """(exit code, host rows) of `fab status --json`."""
    result = deployed.fab("status", "--json")
    return result.returncode, list(json.loads(result.stdout)["hosts"])


def redis_cli(deployed: Deployment, *command: str) -> str:
    """A redis-cli command as the publisher, run on the Redis host; its output."""
    password = (deployed.inventory / "credentials" / "redis-publisher").read_text().strip()
    redis_host = next(h for h in deployed.fleet.hosts.values() if h.role == "redis")
    cli = f"REDISCLI_AUTH={password} redis-cli --no-auth-warning -h {redis_host.address} --user publisher"
    return deployed.ssh(redis_host.name, cli + " " + " ".join(f"'{word}'" for word in command))
