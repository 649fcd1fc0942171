"""Fixtures that own the life of real things: a redis-server on a free loopback port (tests/servers.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RedisServer
from tests.servers import free_port as free_port  # re-exported: tests/integration/test_cli_control.py imports it here

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parents[1]


def require_binary(name: str) -> str:
    """The path of a tool the tests need; fail (never skip) when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make test`, which installs it with apt")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=require_binary("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, emptied (data and ACL users) before each test."""
    (redis_server.workdir / "dump.rdb").unlink(missing_ok=True)  # a save an earlier test made (and restarted from)
    admin = redis_server.client()
    admin.flushall()
    for user in admin.acl_users():
        if user != "default":
            admin.acl_deluser(user)
    yield redis_server


@pytest.fixture(scope="session")
def distribution_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `frontfleet` distribution's wheel, built as a user builds it: `pip wheel` of the checkout's files (a copy
    of what git tracks or would track, so no stale build/ folder leaks in), setuptools in an isolated build env."""
    source = tmp_path_factory.mktemp("sdist") / "frontfleet"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"pip wheel failed: {built.stderr[-3000:]}"
    return next(out.glob("frontfleet-*.whl"))
