"""One agent's credential cannot take the store's memory (docs/reliability.md, "Memory budget").

Each way it could is tried with a real agent credential (`agent-web1`, rules from protocol.agent_acl_rules)
against a redis-server started with the redis role's own limits (tests/redis_role.py renders them from the role
for a fleet of three web hosts). Afterwards the publisher changes data, the deploy lock is taken and given back,
another agent (web2, a real agent process) applies the change and keeps its heartbeat, and Redis' used memory
never went past maxmemory.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from sync_agent.control.hoststatus import fleet_view
from sync_agent.control.lock import DeployLock
from sync_agent.protocol import PUBLISHER_USER, agent_user, publisher_acl_rules
from tests.conftest import require_binary
from tests.integration.conftest import (
    AGENT_PASSWORD,
    KEYS,
    NAMESPACE,
    Agent,
    Fleet,
    agents_on,
    create_agent_user,
    eventually,
)
from tests.redis_role import memory_settings, server_arguments
from tests.servers import RedisServer, new_store
from tests.servers import resp_command as command

pytestmark = pytest.mark.integration

WEB_HOSTS = 3
MIB = 1024 * 1024
ATTACKER = "web1"
STATUS_KEY = KEYS.host(ATTACKER)


@pytest.fixture
def bounded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own with the redis role's memory and connection limits; one per test, so that its
    used_memory_peak is this test's (CONFIG RESETSTAT leaves it)."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", binary=require_binary("redis-server"),
                         options=tuple(server_arguments(WEB_HOSTS)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Store:
    """The bounded Redis with the attacker's credential, the publisher's store and another agent running."""

    server: RedisServer
    fleet: Fleet
    other: Agent
    publisher: redis.Redis

    @property
    def admin(self) -> redis.Redis:
        return self.fleet.admin

    def attacker(self) -> redis.Redis:
        return redis.Redis(host=self.server.host, port=self.server.port, username=agent_user(ATTACKER),
                           password=AGENT_PASSWORD, socket_timeout=10)

    def raw_attacker(self, receive_buffer: int | None = None) -> socket.socket:
        """A socket authenticated as the attacker, speaking RESP itself (redis-py would read every reply)."""
        sock = socket.create_connection((self.server.host, self.server.port), timeout=10)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.sendall(command(b"AUTH", agent_user(ATTACKER).encode(), AGENT_PASSWORD.encode()))
        assert sock.recv(5) == b"+OK\r\n"
        return sock

    def evicted(self) -> int:
        return int(self.admin.info("stats")["evicted_clients"])

    def attacker_connections(self) -> int:
        return len([client for client in self.admin.client_list() if client["user"] == agent_user(ATTACKER)])



@pytest.fixture
def store(bounded_redis: RedisServer, tmp_path: Path) -> Iterator[Store]:
    admin = bounded_redis.client()
    admin.execute_command("ACL", "SETUSER", PUBLISHER_USER, "on", ">pubpw", *publisher_acl_rules(KEYS))
    publisher = redis.Redis(host=bounded_redis.host, port=bounded_redis.port, username=PUBLISHER_USER,
                            password="pubpw", decode_responses=True)
    create_agent_user(admin, ATTACKER)
    with agents_on(Fleet(tmp_path, bounded_redis.host, bounded_redis.port, admin,
                         new_store(publisher, NAMESPACE))) as group:
        for n in range(15):  # the data set near its cap (MAX_DATA_BYTES): the keys' share of the budget in use
            change = group.store.data_set(f"fill{n}", '"' + "f" * (500 * 1024) + '"')
        other = group.agent("web2")
        group.wait_revision(other, change.revision)
        yield Store(bounded_redis, group, other, publisher)


def assert_the_store_goes_on(store: Store) -> dict[str, int]:
    """The publisher, the deploy lock and another agent work; used memory stayed within maxmemory. Returns the
    memory figures (bytes) for the record."""
    change = store.fleet.store.data_set("after", '"the attack"')
    store.fleet.wait_revision(store.other, change.revision, timeout=30)  # 7 MiB of data.json per batch, busy cores
    lock = DeployLock(store.publisher, NAMESPACE)
    token = lock.acquire("rollout after the attack")
    assert lock.info().holder == "rollout after the attack"
    assert lock.release(token)
    seen = store.fleet.status("web2")["seen_at"]
    eventually(lambda: store.fleet.status("web2")["seen_at"] > seen, what="web2's next heartbeat")
    memory = store.admin.info("memory")
    figures = {name: int(memory[name]) for name in ("used_memory", "used_memory_peak", "maxmemory",
                                                      "mem_clients_normal")}
    figures["evicted_clients"] = store.evicted()
    print(f"memory figures: {figures}")
    assert figures["used_memory_peak"] <= figures["maxmemory"], figures
    return figures


def test_the_test_redis_has_the_roles_limits(store: Store) -> None:
    config: dict[str, Any] = store.admin.config_get("*")
    assert {name: config[name] for name in ("maxmemory-policy", "proto-max-bulk-len", "client-query-buffer-limit",
                                            "maxmemory-clients", "maxclients")} == {
        "maxmemory-policy": "noeviction", "proto-max-bulk-len": str(MIB), "client-query-buffer-limit": str(2 * MIB),
        "maxmemory-clients": str(51 * MIB), "maxclients": str(1000 + 8 * WEB_HOSTS)}
    assert int(config["maxmemory"]) == (20 + 2 * WEB_HOSTS + 64) * MIB  # 64 MiB: 1.25 x maxmemory-clients
    assert "pubsub 8388608 2097152 60" in config["client-output-buffer-limit"]
    assert dict(memory_settings(WEB_HOSTS))["maxmemory"] == "90mb"


@pytest.mark.parametrize("args", [
    ("HSET", STATUS_KEY, "field", "x"),
    ("APPEND", STATUS_KEY, "x"),
    ("SETRANGE", STATUS_KEY, "1000000", "x"),
    ("HSET", KEYS.status(ATTACKER), "field", "x"),  # the hash of agents from before NS:host:<host>
    ("HDEL", KEYS.status(ATTACKER), "field"),
    ("SET", KEYS.host("web2"), "{}"),
    ("SET", STATUS_KEY, "{}", "GET"),
    ("DEL", STATUS_KEY),
    ("RPUSH", STATUS_KEY, "x"),
    ("CLIENT", "SETNAME", "x" * 1000),
    ("SELECT", "1"),  # another database, another status key of the same name
], ids=lambda args: " ".join(str(arg)[:12] for arg in args[:2]))
def test_an_agent_credential_sets_its_own_status_and_writes_nothing_else(store: Store, args: tuple[str, ...]) -> None:
    attacker = store.attacker()
    assert attacker.set(STATUS_KEY, '{"release":""}') is True
    with pytest.raises(redis.exceptions.NoPermissionError):
        attacker.execute_command(*args)
    assert store.admin.get(STATUS_KEY) == '{"release":""}'
    assert_the_store_goes_on(store)


def test_hello_which_any_user_may_run_is_gone(store: Store) -> None:
    """HELLO passes every ACL (Redis lets each user run it) and its SETNAME gives a connection a name of up to
    proto-max-bulk-len that maxmemory-clients does not count: the redis role renames it away."""
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command 'HELLO'"):
        store.attacker().execute_command("HELLO", "2", "SETNAME", "x" * 1000)
    assert_the_store_goes_on(store)


def test_a_status_over_proto_max_bulk_len_is_refused_and_a_garbage_one_is_that_hosts_error(store: Store) -> None:
    attacker = store.attacker()
    assert attacker.set(STATUS_KEY, b"\xff" * MIB) is True  # exactly proto-max-bulk-len: the most it can hold
    with pytest.raises(redis.exceptions.ResponseError, match="invalid bulk length"):
        store.attacker().set(STATUS_KEY, b"x" * (MIB + 1))
    assert store.admin.strlen(STATUS_KEY) == MIB
    views = {view.host: view for view in fleet_view(store.fleet.store, [ATTACKER, "web2"])}
    assert views[ATTACKER].problem.startswith("degraded: unreadable status in Redis: its status is 1048576 bytes")
    assert views["web2"].healthy, views["web2"].problem
    assert_the_store_goes_on(store)


def test_a_multi_that_queues_without_end_is_cut_off(store: Store) -> None:
    sock = store.raw_attacker()
    sock.sendall(command(b"MULTI"))
    value = b"v" * (MIB // 2)
    queued = 0
    try:
        for _ in range(200):  # 100 MiB queued, past maxmemory
            sock.sendall(command(b"SET", STATUS_KEY.encode(), value))
            queued += 1
    except OSError:
        pass
    eventually(lambda: store.attacker_connections() == 0, what="the attacker's MULTI cut off")
    assert queued < 200 and store.evicted() >= 1
    sock.close()
    assert_the_store_goes_on(store)


def test_many_connections_holding_half_sent_requests_are_cut_off(store: Store) -> None:
    start = command(b"SET", STATUS_KEY.encode(), b"x" * MIB)[:-(MIB // 16)]  # all but the last 64 KiB
    sockets = []
    for _ in range(100):  # 100 MiB of requests that never end
        sock = store.raw_attacker()
        with contextlib.suppress(OSError):
            sock.sendall(start)
        sockets.append(sock)
    left = store.attacker_connections()
    for sock in sockets:
        sock.close()
    assert left <= 60 and store.evicted() >= 40, (left, store.evicted())
    assert_the_store_goes_on(store)


def test_a_subscriber_that_stops_reading_is_disconnected(store: Store) -> None:
    sock = store.raw_attacker(receive_buffer=4096)
    sock.sendall(command(b"SUBSCRIBE", KEYS.events.encode()))
    time.sleep(0.2)
    for n in range(200):  # 200 events of 100 KiB: past the pubsub hard limit (8 MiB) and what sockets buffer
        store.fleet.store.data_set("banner", '"' + str(n % 10) * (100 * 1024) + '"')
    eventually(lambda: store.attacker_connections() == 0, timeout=30,
               what="the subscriber that stopped reading disconnected")
    sock.close()
    assert_the_store_goes_on(store)


def test_replies_left_unread_are_cut_off(store: Store) -> None:
    sock = store.raw_attacker(receive_buffer=4096)
    sock.sendall(command(b"HGETALL", KEYS.data.encode()) * 50)  # 375 MiB of replies it never reads
    eventually(lambda: store.attacker_connections() == 0, what="the reader that stopped reading disconnected")
    sock.close()
    assert_the_store_goes_on(store)
