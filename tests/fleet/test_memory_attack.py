"""One web host's agent credential against the session fleet's Redis, as a host that was broken into would use it
(docs/reliability.md, "Memory budget" and "Security: what each credential was refused"): it cannot grow the store's
memory, and afterwards `fab data-set`, a rollout and `fab status` work for the whole fleet."""

from __future__ import annotations

import contextlib
import select
import socket
from pathlib import Path

import pytest
import redis

from tests.fleet.deployment import Deployment, wait_until
from tests.fleet.fab_builds import Builds, assert_fleet_serves, fab_json, rollout, status_json
from tests.fleet.helpers import serves
from tests.servers import resp_command

pytestmark = pytest.mark.fleet

MIB = 1024 * 1024
HOST = "web1"
STATUS_KEY = f"fleettest:host:{HOST}".encode()


class Credential:
    """web1's agent credential (the inventory's credentials/redis-agent-web1), aimed at the fleet's Redis."""

    def __init__(self, deployed: Deployment) -> None:
        redis_host = next(h for h in deployed.fleet.hosts.values() if h.role == "redis")
        self.address = (redis_host.address, 6379)
        self.user = f"agent-{HOST}"
        self.password = (deployed.inventory / "credentials" / f"redis-agent-{HOST}").read_text().strip()

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.address[0], port=self.address[1], username=self.user, password=self.password,
                           socket_timeout=30)

    def socket(self) -> socket.socket:
        """A connection authenticated as the agent, speaking RESP itself (redis-py would read every reply)."""
        sock = socket.create_connection(self.address, timeout=30)
        sock.sendall(resp_command(b"AUTH", self.user.encode(), self.password.encode()))
        assert sock.recv(5) == b"+OK\r\n"
        return sock


def closed_by_redis(sockets: list[socket.socket], wait: float = 5.0) -> int:
    """How many of the connections Redis closed: each readable one is read to its end (EOF or a reset)."""
    closed = 0
    for sock in sockets:
        sock.settimeout(wait)
        try:
            while sock.recv(1 << 16):
                pass
            closed += 1
        except TimeoutError:
            continue
        except OSError:
            closed += 1
        wait = 0.2  # the first waited for Redis; the rest were closed by then, or are open
    return closed


@pytest.mark.timeout(600)
def test_one_agents_credential_cannot_fill_the_store_and_the_fleet_goes_on(deployed: Deployment,
                                                                          tmp_path: Path) -> None:
    builds = Builds.create(tmp_path, "memory")
    rollout(deployed, builds.a)
    credential = Credential(deployed)

    # issue 16's attack: fields without bound on its status hash; then what a string value could still do
    with pytest.raises(redis.exceptions.NoPermissionError):
        credential.client().hset(f"fleettest:status:{HOST}", mapping={f"f{n}": "x" * 1000 for n in range(100)})
    with pytest.raises(redis.exceptions.NoPermissionError):
        credential.client().append(STATUS_KEY, "x" * 1000)
    with pytest.raises(redis.exceptions.ResponseError, match="invalid bulk length"):
        credential.client().set(STATUS_KEY, b"x" * (MIB + 1))

    # a MULTI that queues 100 MiB
    multi = credential.socket()
    multi.sendall(resp_command(b"MULTI"))
    with contextlib.suppress(OSError):
        for _ in range(200):
            multi.sendall(resp_command(b"SET", STATUS_KEY, b"v" * (MIB // 2)))
    assert closed_by_redis([multi]) == 1, "Redis kept a MULTI of 100 MiB queued"

    # 100 connections, each holding a request of 1 MiB that never ends
    half_sent = resp_command(b"SET", STATUS_KEY, b"x" * MIB)[:-(MIB // 16)]
    sockets = []
    for _ in range(100):
        sock = credential.socket()
        with contextlib.suppress(OSError):
            sock.sendall(half_sent)
        sockets.append(sock)
    select.select([], [], [], 1.0)
    closed = closed_by_redis(sockets, wait=2.0)
    for sock in [multi, *sockets]:
        sock.close()
    assert closed >= 40, f"Redis kept {100 - closed} of 100 connections holding 1 MiB each"

    # the fleet goes on: a data change reaches every host, a rollout switches every host, fab status is clean
    fab_json(deployed, "data-set", "memory-attack", '"survived"')
    wait_until(lambda: all(serves(deployed, host, "memory-attack", "survived") for host in deployed.web_hosts),
               timeout=30, what="every host to serve the data change made after the attack")
    rollout(deployed, builds.b)
    assert_fleet_serves(deployed, builds.b)
    code, rows = status_json(deployed)
    assert code == 0, rows
    assert {row["host"] for row in rows} == set(deployed.web_hosts)
