"""What every benchmark shares: a private redis-server, real `sync-agent run` processes, statistics, results.

Only loopback addresses: the local Redis binds 127.0.22.1 (the benchmarks' own range; the fleet
benchmarks use 127.0.21.x). Every process started here is remembered by pid and stopped in a
`finally` by the code that started it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from sync_agent.protocol import HostStatus, Keys, agent_acl_rules, agent_user
from tests.servers import RedisServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
LOCAL_ADDRESS = "127.0.22.1"
NAMESPACE = "bench"
KEYS = Keys(NAMESPACE)
AGENT_PASSWORD = "bench-agent-secret"


def now_ns() -> int:
    """CLOCK_MONOTONIC: one clock for every process on this machine."""
    return time.monotonic_ns()


# --- statistics -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return float(ordered[rank])


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "median": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan")}


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50)


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


# --- results ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def write_result(name: str, body: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **body}
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


# --- processes --------------------------------------------------------------------------------------


def stop_all(procs: Sequence[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGTERM every process (by its pid), then wait for all; SIGKILL what is left at the deadline."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: what the process costs when many share the interpreter's pages."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss_bytes(pid)


def local_redis(workdir: Path) -> RedisServer:
    """A redis-server of our own on 127.0.22.1, no persistence, room for thousands of clients (start() it)."""
    return RedisServer(workdir, host=LOCAL_ADDRESS, maxclients=4000, client_timeout=30)


# --- agents -----------------------------------------------------------------------------------------


@dataclass
class LocalAgent:
    host: str
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        return self.base / "srv"

    @property
    def shared(self) -> Path:
        return self.root / "shared"


@dataclass
class AgentGroup:
    """N real `sync-agent run` processes against one Redis, each with its own ACL user and release root."""

    redis: RedisServer
    workdir: Path
    templates: Path | None = REPO / "templates"
    log_level: str = "info"
    extra_config: str = ""  # more of each agent's config.toml, e.g. a [live] section
    agents: list[LocalAgent] = field(default_factory=list)

    def add(self, count: int, start_index: int | None = None) -> list[LocalAgent]:
        admin = self.redis.client()
        first = len(self.agents) + 1 if start_index is None else start_index
        new = []
        for index in range(first, first + count):
            host = f"b{index}"
            base = self.workdir / host
            (base / "srv" / "releases").mkdir(parents=True, exist_ok=True)
            (base / "srv" / "shared").mkdir(parents=True, exist_ok=True)
            password_file = base / "redis.password"
            password_file.write_text(AGENT_PASSWORD + "\n")
            admin.execute_command("ACL", "SETUSER", agent_user(host), "on", f">{AGENT_PASSWORD}",
                                  *agent_acl_rules(KEYS, host))
            templates = f'templates_dir = "{self.templates}"\n' if self.templates else ""
            (base / "config.toml").write_text(
                f'[agent]\nhost = "{host}"\nnamespace = "{NAMESPACE}"\nrelease_root = "{base / "srv"}"\n'
                f'{templates}log_level = "{self.log_level}"\n\n'
                f'[redis]\nurl = "{self.redis.url}"\nusername = "{agent_user(host)}"\n'
                f'password_file = "{password_file}"\n{self.extra_config.format(base=base)}')
            agent = LocalAgent(host, base)
            log = open(base / "agent.log", "ab")  # noqa: SIM115 - handed to the child
            agent.process = subprocess.Popen([str(BIN / "sync-agent"), "run", "--config", str(base / "config.toml")],
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={k: v for k, v in os.environ.items()
                                                  if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")})
            log.close()
            new.append(agent)
            self.agents.append(agent)
        return new

    def wait_ready(self, agents: Sequence[LocalAgent] | None = None, timeout: float = 300) -> float:
        """Wait until every agent reports the store's revision in its status; returns the seconds it took."""
        agents = list(agents if agents is not None else self.agents)
        admin = self.redis.client()
        start = time.monotonic()
        deadline = start + timeout
        pending = {a.host for a in agents}
        while pending:
            revision = int(admin.get(KEYS.revision) or 0)
            pipe = admin.pipeline(transaction=False)
            hosts = sorted(pending)
            for host in hosts:
                pipe.get(KEYS.host(host))
            for host, raw in zip(hosts, pipe.execute(), strict=True):
                status = HostStatus.from_json(raw) if raw else None
                if status is not None and status.state == "ready" and status.revision >= revision:
                    pending.discard(host)
            dead = [a.host for a in agents if a.process is not None and a.process.poll() is not None]
            if dead:
                raise RuntimeError(f"agents exited: {dead[:5]} (see {self.workdir}/<host>/agent.log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} agents not ready after {timeout}s, e.g. {sorted(pending)[:3]}")
            time.sleep(0.1)
        return time.monotonic() - start

    def pids(self) -> list[int]:
        return [a.process.pid for a in self.agents if a.process is not None]

    def stop(self) -> None:
        stop_all([a.process for a in self.agents if a.process is not None])
        self.agents.clear()


def workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"frontfleet-bench-{prefix}-")


def ensure_initialised(client: redis.Redis) -> None:
    """A store with an epoch, so agents come up `ready` (not `degraded: the store is empty`)."""
    from tests.servers import new_store

    if not client.get(KEYS.epoch):
        new_store(client, NAMESPACE).data_set("bench", json.dumps({"seq": 0, "t": 0}))
