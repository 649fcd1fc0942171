"""Fixtures that own the life of real things: a redis-server on a free loopback port (tests/servers.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.servers import RedisServer
from tests.servers import free_port as free_port  # re-exported: tests/integration/test_cli_control.py imports it here

IN_CI = os.environ.get("CI") == "true"


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
