"""Benchmark 6, the live stream's fan-out: how many open streams one agent serves, each getting a change within
100 ms p99, and what a stream costs in memory; and the agent's apply path with the streams open vs. without.

One real agent (`sync-agent run` with a `[live]` socket) and its fan-out process against a local Redis, all pinned
to CPU 0; the load generator (bench/live_client.py: raw non-blocking sockets, one process) pinned to CPU 1 opens N
streams on the agent's unix socket. For each N: the RSS of the agent and its fan-out before and after the streams
opened, then `changes` data changes published by the generator itself (the time taken just before the publish
call, CLOCK_MONOTONIC) and the latency from there to each stream's receipt of the change's `id:`. The apply path: `propagation`'s steady load (publish →
`data.json` renamed, seen by inotify) without streams, then with the first N's streams open and read, then without
streams again (the two runs without streams are how far this machine's noise goes). With the streams open, three
ways: the fan-out process on the agent's core (as above: one core for the whole host), the fan-out on the
generator's core (as on a host with a core to spare), and the fan-out stopped (SIGSTOP: the agent's own part of
every change alone, none of the CPU that the sends and the generator's reads take; SIGCONT then sends the backlog).
Nothing here passes or fails: the figures and ratios are the output (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, AgentGroup, ensure_initialised, local_redis, percentile, rss_bytes, stop_all
from bench.propagation import Publisher, _collect_watchers, _latencies_from_observations, _summarise, _watch

LIVE_CONFIG = '\n[live]\nsocket = "{base}/live.sock"\nmax_clients = 100000\n'
AGENT_CPU, GENERATOR_CPU = 0, 1
TARGET_P99_MS = 100.0
FD_MARGIN = 64  # files a process needs besides its streams (Python, Redis, logs)


def _cap(requested: list[int]) -> tuple[list[int], int]:
    """The stream counts this machine can hold: one file per stream in the agent and in the generator, under the
    hard RLIMIT_NOFILE each process inherits (raised to it here; past it needs CAP_SYS_RESOURCE)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ceiling = hard - FD_MARGIN
    return sorted({min(n, ceiling) for n in requested}), hard


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the agent and its fan-out process)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += _tree(int(child))
    return found


def _pin(pid: int, cpu: int) -> None:
    """Every thread of pid and of its descendants on cpu: the host under test is the agent with its fan-out."""
    if (os.cpu_count() or 1) > cpu:
        for process in _tree(pid):
            for task in Path(f"/proc/{process}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpu})


def _rss(pid: int) -> int:
    return sum(rss_bytes(process) for process in _tree(pid))


class Generator:
    """bench/live_client.py with N streams open, pinned to its own core; commands over its stdin."""

    def __init__(self, socket: Path, streams: int, redis_url: str, namespace: str, out: Path) -> None:
        self.out = out
        cpu = GENERATOR_CPU if (os.cpu_count() or 1) > GENERATOR_CPU else 0
        self.process = subprocess.Popen([sys.executable, "-m", "bench.live_client", str(socket), str(streams),
                                         str(cpu), redis_url, namespace, str(out)], cwd=REPO, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        words = self.process.stdout.readline().split()
        if not words or words[0] != "ready":
            self.stop()
            raise RuntimeError(f"the load generator did not open {streams} streams")
        self.open_s, self.rss = float(words[1]), int(words[2])

    def changes(self, count: int, gap: float, timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"changes {count} {gap} {timeout}\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "done":
            raise RuntimeError("the load generator stopped")
        return dict(json.loads(self.out.read_text()))

    def stop(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
        stop_all([self.process])


def _apply_path(publisher: Publisher, shared: Path, workdir: Path, count: int, rate: float, tag: str
                ) -> dict[str, Any]:
    """propagation's steady load on the one agent: publish → data.json renamed into place."""
    watchers = _watch([shared], workdir, tag)
    try:
        first, last = publisher.run(count, rate)
        observations = _collect_watchers(watchers, last, 60.0)
    finally:
        stop_all([w for w, _ in watchers])
    latencies, _, missing = _latencies_from_observations(observations, publisher.sent, first, last)
    return _summarise(latencies) | {"missing": missing}


def _fanout_pid(agent_pid: int) -> int:
    return next(pid for pid in _tree(agent_pid) if pid != agent_pid)


def _fanout_row(streams: int, result: dict[str, Any], rss_before: int, rss_after: int, open_s: float
                ) -> dict[str, Any]:
    samples = [ms for change in result["changes"] for ms in change["latencies_ms"]]
    per_change_max = [max(change["latencies_ms"], default=float("nan")) for change in result["changes"]]
    return {"streams": streams, "changes": len(result["changes"]), "samples": len(samples),
            "missing": sum(change["missing"] for change in result["changes"]),
            "closed_by_agent": max((change["closed"] for change in result["changes"]), default=0),
            "median_ms": round(percentile(samples, 50), 2), "p99_ms": round(percentile(samples, 99), 2),
            "max_ms": round(max(samples, default=float("nan")), 2),
            "last_stream_median_ms": round(percentile(per_change_max, 50), 2),
            "target_met": percentile(samples, 99) <= TARGET_P99_MS,
            "open_s": round(open_s, 2), "agent_rss_mb_before": round(rss_before / 2**20, 1),
            "agent_rss_mb_after": round(rss_after / 2**20, 1),  # before: the idle agent, before any stream
            "kib_per_stream": round((rss_after - rss_before) / streams / 1024, 2),
            "generator_cpu_share": round(result["cpu_s"] / result["wall_s"], 2) if result["wall_s"] else None}


def run(steps: list[int], changes: int, gap: float, apply_count: int, apply_rate: float, apply_at: list[int],
        workdir: Path, log: Any = print) -> dict[str, Any]:
    steps, hard_limit = _cap(steps)
    rows: list[dict[str, Any]] = []
    apply: dict[str, Any] = {"with_streams": [], "fanout_own_core": [], "fanout_paused": []}
    with local_redis(workdir).start() as redis:
        ensure_initialised(redis.client())
        group = AgentGroup(redis, workdir / "agents", extra_config=LIVE_CONFIG)
        try:
            agent = group.add(1)[0]
            group.wait_ready()
            assert agent.process is not None and redis.process is not None
            _pin(agent.process.pid, AGENT_CPU)
            _pin(redis.process.pid, AGENT_CPU)
            socket = agent.base / "live.sock"
            publisher = Publisher(redis)
            apply["without_streams"] = _apply_path(publisher, agent.shared, workdir, apply_count, apply_rate, "none")
            log(f"  live: apply path without streams: {apply['without_streams']}")
            idle = _rss(agent.process.pid)  # Python keeps what the streams of a step before used: the base
            for streams in steps:
                time.sleep(1.0)  # the streams of the step before are gone
                generator = Generator(socket, streams, redis.url, "bench", workdir / f"live-{streams}.json")
                try:
                    after, agent_alone = _rss(agent.process.pid), rss_bytes(agent.process.pid)
                    row = _fanout_row(streams, generator.changes(changes, gap, 10.0), idle, after,
                                      generator.open_s)
                    row["generator_rss_mb"] = round(generator.rss / 2**20, 1)
                    row["fanout_rss_mb"] = round((after - agent_alone) / 2**20, 1)
                    rows.append(row)
                    log(f"  live: {streams} streams: p50 {row['median_ms']} / p99 {row['p99_ms']} / max "
                        f"{row['max_ms']} ms, {row['kib_per_stream']} KiB/stream (fan-out {row['fanout_rss_mb']} MB), missing {row['missing']}, "
                        f"generator CPU {row['generator_cpu_share']}")
                    if streams in apply_at:
                        apply["with_streams"].append(_apply_path(publisher, agent.shared, workdir, apply_count,
                                                                 apply_rate, f"streams{streams}")
                                                     | {"streams": streams})
                        log(f"  live: apply path with {streams} streams: {apply['with_streams'][-1]}")
                        fanout = _fanout_pid(agent.process.pid)
                        _pin(fanout, GENERATOR_CPU)
                        try:
                            apply["fanout_own_core"].append(_apply_path(publisher, agent.shared, workdir,
                                                                        apply_count, apply_rate, f"own{streams}")
                                                            | {"streams": streams})
                        finally:
                            _pin(fanout, AGENT_CPU)
                        log(f"  live: apply path with {streams} streams, the fan-out on CPU {GENERATOR_CPU}: "
                            f"{apply['fanout_own_core'][-1]}")
                        os.kill(fanout, signal.SIGSTOP)
                        try:
                            apply["fanout_paused"].append(_apply_path(publisher, agent.shared, workdir,
                                                                      apply_count, apply_rate, f"paused{streams}")
                                                          | {"streams": streams})
                        finally:
                            os.kill(fanout, signal.SIGCONT)  # the feed kept every change: the streams catch up
                        log(f"  live: apply path with {streams} streams, the fan-out paused: "
                            f"{apply['fanout_paused'][-1]}")
                finally:
                    generator.stop()
            if apply["with_streams"]:  # the same load without streams once more: how far two such runs differ
                time.sleep(1.0)
                apply["without_streams_again"] = _apply_path(publisher, agent.shared, workdir, apply_count,
                                                             apply_rate, "again")
                log(f"  live: apply path without streams, again: {apply['without_streams_again']}")
        finally:
            group.stop()
    baselines = [apply[name] for name in ("without_streams", "without_streams_again") if name in apply]
    for row in apply["with_streams"] + apply["fanout_own_core"] + apply["fanout_paused"]:
        row["p99_ratio"] = round(row["p99_ms"] / apply["without_streams"]["p99_ms"], 2)
        row["median_ratio"] = round(row["median_ms"] / apply["without_streams"]["median_ms"], 2)
        # "no slower": within what this machine gives the same load without streams
        row["no_slower"] = row["p99_ms"] <= max(b["p99_ms"] for b in baselines)
    met = [row["streams"] for row in rows if row["target_met"]]
    return {"config": {"steps": steps, "changes_per_step": changes, "gap_s": gap, "apply_changes": apply_count,
                       "apply_rate_per_s": apply_rate, "apply_at": apply_at, "rlimit_nofile_hard": hard_limit,
                       "agent_cpu": AGENT_CPU, "generator_cpu": GENERATOR_CPU},
            "rows": rows, "apply": apply, "most_streams_within_target": max(met, default=0)}


__all__ = ["run"]
