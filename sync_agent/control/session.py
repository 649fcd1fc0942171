"""One operation's connections to a fleet (its inventory, SSH to its hosts, Redis), and running work on every
host in parallel with the failures kept per host."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from ..errors import FrontfleetError, HostError, UsageError
from ..protocol import PUBLISHER_USER
from .fleetcache import cached_fleet
from .inventory import Fleet, Host
from .lock import DeployLock
from .remote import Remote
from .store import Store, read_password

T = TypeVar("T")
MAX_PARALLEL_HOSTS = 16


@dataclass
class Session:
    """One operation's connections: the fleet, SSH to its hosts, Redis (tunnelled unless direct)."""

    fleet: Fleet
    remote: Remote
    store: Store

    @property
    def lock(self) -> DeployLock:
        return DeployLock(self.store.client, self.fleet.namespace)

    @property
    def web_names(self) -> list[str]:
        return [h.name for h in self.fleet.web]

    def agent(self, host: Host, *args: str) -> list[str]:
        """The command line of `sync-agent ARGS` on host (the agent's own virtualenv)."""
        return [f"{host.settings['frontfleet_agent_venv']}/bin/sync-agent", *args]

    def agent_json(self, host: Host, *args: str, stdin: bytes | None = None, timeout: float = 120) -> Any:
        output = self.remote.run(host, self.agent(host, *args), stdin=stdin, timeout=timeout)
        with reading_answer_of(host):
            return json.loads(output)


@contextmanager
def reading_answer_of(host: Host) -> Iterator[None]:
    """What a host answers is input too: an answer this controller cannot read (another version, a broken or
    hostile host) fails that host, named, instead of the whole operation with a traceback."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HostError(host.name, f"answered what this controller cannot read ({type(err).__name__}: {err}); "
                                   "is its agent the same version?") from err


def release_root(host: Host) -> str:
    return str(host.settings["frontfleet_release_root"])


def publisher_password(fleet: Fleet) -> str:
    path = Path(str(fleet.setting("frontfleet_credentials_dir"))) / "redis-publisher"
    if not path.exists():
        raise UsageError(f"no publisher password at {path}; run `ansible-playbook deploy.yml` first, "
                         "which generates it")
    return read_password(path)


@contextmanager
def session(inventory: str | None = None) -> Iterator[Session]:
    """Open a session on the inventory's fleet (see inventory.default_inventory; read through the cache)."""
    fleet = cached_fleet(inventory)
    password = publisher_password(fleet)
    address = str(fleet.setting("frontfleet_redis_address"))
    port = int(fleet.setting("frontfleet_redis_port"))
    with Remote(fleet) as remote:
        if fleet.setting("frontfleet_redis_direct"):
            where: dict[str, Any] = {"host": address, "port": port}
        else:  # through the redis host, on a tunnel that the next command finds open
            where = {"unix_socket_path": remote.redis_socket(fleet.redis, address, port)}
        client = redis.Redis(**where, username=PUBLISHER_USER, password=password, decode_responses=True,
                             socket_connect_timeout=5)
        yield Session(fleet, remote, Store(client, fleet.namespace))


def host_pool(hosts: list[Host]) -> ThreadPoolExecutor:
    """Threads for work on hosts in parallel: one per host, at most MAX_PARALLEL_HOSTS."""
    return ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_HOSTS, len(hosts))))


def on_each(hosts: list[Host], work: Callable[[Host], T]) -> tuple[dict[str, T], dict[str, FrontfleetError]]:
    """Run work on every host in parallel, to the end on every host: (host → result, host → its FrontfleetError).
    The caller decides what the failures mean (HostFailures reports them)."""
    with host_pool(hosts) as pool:
        futures = {host.name: pool.submit(work, host) for host in hosts}
    results: dict[str, T] = {}
    failures: dict[str, FrontfleetError] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except FrontfleetError as err:
            failures[name] = err
    return results, failures
