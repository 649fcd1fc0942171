"""`sync-agent fleet` (and so `fab status`) reading a degraded host: the controller's side of a failed write.

The statuses are written here the way an agent writes them: what is tested is the controller's
reading of a host that reports `degraded`, through a real `sync-agent fleet` process and a real Redis.
"""

from __future__ import annotations

import json

import pytest

from sync_agent.control.hoststatus import fleet_view
from sync_agent.control.store import Change, Store
from sync_agent.errors import EXIT_OK, EXIT_UNHEALTHY
from sync_agent.protocol import HostStatus
from tests.integration.test_cli_control import run
from tests.servers import RedisServer, new_store

pytestmark = pytest.mark.integration

WRITE_FAILED = "cannot write /srv/app/shared/data.json: [Errno 28] No space left on device"


def report(store: Store, host: str, change: Change, state: str, error: str = "") -> None:
    """The status an agent writes after it applied change (or failed to write it, when degraded)."""
    status = HostStatus(release="rel-a", revision=change.revision, epoch=change.epoch, state=state, error=error,
                        seen_at=store.server_time(), heartbeat=5.0, pid=1)
    store.client.set(store.keys.host(host), status.to_json())


def test_a_degraded_host_exits_5_and_shows_the_agents_error_until_it_is_ready(publisher_env: dict[str, str],
                                                                             fresh_redis: RedisServer) -> None:
    with fresh_redis.client() as client:
        store = new_store(client, "ff")
        change = store.activate("rel-a")
        report(store, "web1", change, "ready")
        report(store, "web2", change, "degraded", WRITE_FAILED)

        views = {v.host: v for v in fleet_view(store, ["web1", "web2"])}
        assert views["web1"].healthy and not views["web2"].healthy
        assert views["web2"].problem == f"degraded: {WRITE_FAILED}"

        result = run("fleet", "--hosts", "web1,web2", "--json", env=publisher_env)
        assert result.returncode == EXIT_UNHEALTHY
        rows = {row["host"]: row for row in json.loads(result.stdout)["hosts"]}
        assert (rows["web1"]["healthy"], rows["web2"]["healthy"]) == (True, False)
        assert WRITE_FAILED in rows["web2"]["problem"]
        text = run("fleet", "--hosts", "web1,web2", env=publisher_env)
        web2 = next(line for line in text.stdout.splitlines() if line.startswith("web2"))
        assert text.returncode == EXIT_UNHEALTHY and "degraded" in web2 and "No space left on device" in web2

        report(store, "web2", change, "ready")
        assert run("fleet", "--hosts", "web1,web2", env=publisher_env).returncode == EXIT_OK
