"""Benchmark 1, data propagation: publish call → `shared/data.json` renamed into place, on 1, 10, 100 agents.

Three systems run in turn against one local Redis, on the same channel and the same published
messages (the store's Lua script, as `fab data-set` does): the real agents (`sync-agent run`), floor
(a) plain redis-py subscribers that only receive, and floor (b) the same subscribers writing
data.json by temp file + rename for every message. Two loads: steady (changes at a fixed rate)
and burst (as fast as one publisher sends). How the time is taken: bench/watcher.py, docs/performance.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    KEYS,
    NAMESPACE,
    AgentGroup,
    ensure_initialised,
    local_redis,
    median,
    now_ns,
    percentile,
    ratio,
    stop_all,
)
from tests.servers import RedisServer, new_store

WATCH_PER_PROCESS = 50
SYSTEMS = ("agent", "floor_a", "floor_b")


class Publisher:
    """Publishes {"seq": n} under the data key `bench` through the store's script; notes when each call began."""

    def __init__(self, redis: RedisServer) -> None:
        self.client = redis.client()
        self.store = new_store(self.client, NAMESPACE)
        current = self.client.hget(KEYS.data, "bench")
        self.seq = int(json.loads(current)["seq"]) if current else 0
        self.sent: dict[int, int] = {}
        self.last_seconds = 0.0  # how long the last run() took: a starved publisher falls behind its rate

    def run(self, count: int, rate: float | None) -> tuple[int, int]:
        """Publish count changes at rate per second (None: as fast as it can); returns (first, last) seq."""
        first = self.seq + 1
        start = time.monotonic()
        for i in range(count):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.seq += 1
            body = json.dumps({"seq": self.seq, "end": i == count - 1})
            self.sent[self.seq] = now_ns()
            self.store.data_set("bench", body)
        self.last_seconds = time.monotonic() - start
        return first, self.seq


def _watch(dirs: list[Path], workdir: Path, tag: str) -> list[tuple[subprocess.Popen[str], Path]]:
    watchers = []
    for index in range(0, len(dirs), WATCH_PER_PROCESS):
        out = workdir / f"watch-{tag}-{index}.json"
        proc = subprocess.Popen([sys.executable, "-m", "bench.watcher", str(out),
                                 *[str(d) for d in dirs[index:index + WATCH_PER_PROCESS]]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        watchers.append((proc, out))
    for proc, _ in watchers:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a watcher did not start")
    return watchers


def _collect_watchers(watchers: list[tuple[subprocess.Popen[str], Path]], last: int,
                      timeout: float) -> dict[str, list[list[int]]]:
    for proc, _ in watchers:
        assert proc.stdin is not None
        proc.stdin.write(f"final {last} {timeout}\n")
        proc.stdin.flush()
    observations: dict[str, list[list[int]]] = {}
    for proc, out in watchers:
        proc.wait(timeout=timeout + 30)
        observations.update(json.loads(out.read_text())["observations"])
        out.unlink()
    return observations


def _latencies_from_observations(observations: dict[str, list[list[int]]], sent: dict[int, int], first: int,
                                 last: int) -> tuple[list[float], float, int]:
    """Per process and change: ms until the file held that seq or a later one. Also: ms from the first publish
    until every process held `last`, and how many processes never got there."""
    latencies: list[float] = []
    all_final = 0
    missing = 0
    for rows in observations.values():
        rows = [r for r in rows if r[1] >= first]
        pointer = 0
        for seq in range(first, last + 1):
            while pointer < len(rows) and rows[pointer][1] < seq:
                pointer += 1
            if pointer == len(rows):
                missing += 1
                break
            latencies.append((rows[pointer][0] - sent[seq]) / 1e6)
        final = next((t for t, s in rows if s >= last), None)
        if final is not None:
            all_final = max(all_final, final - sent[first])
    return latencies, all_final / 1e6, missing


def _final_latency_ms(observations: dict[str, list[list[int]]], sent: dict[int, int], last: int) -> float:
    """ms from the last publish call until every process held it (a slow publisher does not count)."""
    worst = 0
    for rows in observations.values():
        final = next((t for t, s in rows if s >= last), None)
        if final is not None:
            worst = max(worst, final - sent[last])
    return worst / 1e6


def _floor_processes(mode: str, redis: RedisServer, n: int, workdir: Path) -> tuple[list[subprocess.Popen[bytes]],
                                                                                   list[Path]]:
    procs, targets = [], []
    for index in range(n):
        if mode == "receive":
            target = workdir / f"floor-a-{index}"
            target.mkdir(parents=True, exist_ok=True)
        else:
            target = workdir / f"floor-b-{index}"
            target.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.floors", mode, redis.host, str(redis.port),
                                       KEYS.events, str(target)], stdin=subprocess.DEVNULL,
                                      cwd=Path(__file__).parents[1]))
        targets.append(target)
    client = redis.client()
    deadline = time.monotonic() + 120
    while int(client.pubsub_numsub(KEYS.events)[0][1]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("floor subscribers did not subscribe")
        time.sleep(0.05)
    return procs, targets


def _run_load(system: str, publisher: Publisher, dirs: list[Path], procs: list[subprocess.Popen[Any]],
              workdir: Path, count: int, rate: float | None, tag: str) -> dict[str, Any]:
    timeout = 120.0
    watchers = _watch(dirs, workdir, tag)
    try:
        first, last = publisher.run(count, rate)
        observations = _collect_watchers(watchers, last, timeout)
    finally:
        stop_all([w for w, _ in watchers])
    latencies, all_final, missing = _latencies_from_observations(observations, publisher.sent, first, last)
    return {"first": first, "last": last, "latencies": latencies, "all_final_ms": all_final, "missing": missing,
            "publish_s": publisher.last_seconds,
            "final_after_last_publish_ms": _final_latency_ms(observations, publisher.sent, last)}


def _summarise(latencies: list[float]) -> dict[str, float]:
    return {"n": len(latencies), "median_ms": round(percentile(latencies, 50), 3),
            "p99_ms": round(percentile(latencies, 99), 3), "max_ms": round(max(latencies), 3) if latencies else math.nan}


def run(sizes: list[int], steady_count: int, steady_rate: float, burst_count: int, steady_reps: int, burst_reps: int,
        workdir: Path, log: Any = print) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with local_redis(workdir).start() as redis:
        ensure_initialised(redis.client())
        for size in sizes:
            for system in SYSTEMS:
                runs = _measure(system, size, redis, workdir / f"{system}-{size}", steady_count, steady_rate,
                                burst_count, steady_reps, burst_reps, log)
                rows.extend(runs)
    ratios = []
    for size in sizes:
        def pick(system: str, load: str) -> dict[str, Any]:
            return next(r for r in rows if r["size"] == size and r["system"] == system and r["load"] == load)
        steady_b, steady_agent = pick("floor_b", "steady"), pick("agent", "steady")
        burst_b, burst_agent = pick("floor_b", "burst"), pick("agent", "burst")
        ratios.append({
            "size": size,
            "steady_p99_vs_floor_b": round(ratio(steady_agent["p99_ms"], steady_b["p99_ms"]), 2),
            "steady_p99_target_met": steady_agent["p99_ms"] <= 1.2 * steady_b["p99_ms"],
            "burst_all_final_vs_floor_b": round(ratio(burst_agent["all_final_ms"], burst_b["all_final_ms"]), 2),
            "burst_target_met": burst_agent["all_final_ms"] < burst_b["all_final_ms"],
        })
    return {"config": {"sizes": sizes, "steady_changes": steady_count, "steady_rate_per_s": steady_rate,
                       "burst_changes": burst_count, "steady_repetitions": steady_reps,
                       "burst_repetitions": burst_reps},
            "rows": rows, "ratios": ratios}


def _measure(system: str, size: int, redis: RedisServer, workdir: Path, steady_count: int, steady_rate: float,
             burst_count: int, steady_reps: int, burst_reps: int, log: Any) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    publisher = Publisher(redis)
    group: AgentGroup | None = None
    procs: list[subprocess.Popen[Any]] = []
    started = time.monotonic()
    try:
        if system == "agent":
            group = AgentGroup(redis, workdir)
            group.add(size)
            group.wait_ready()
            dirs = [a.shared for a in group.agents]
            procs = [a.process for a in group.agents if a.process is not None]
        else:
            procs, dirs = _floor_processes("receive" if system == "floor_a" else "write", redis, size, workdir)
        log(f"  propagation: {size} x {system} up in {time.monotonic() - started:.1f}s")
        results = []
        plan = [("steady", steady_count, steady_rate)] * steady_reps + [("burst", burst_count, None)] * burst_reps
        for index, (load, count, rate) in enumerate(plan):
            if system == "floor_a":
                results.append((load, _floor_a_load(publisher, procs, dirs, count, rate, index)))
            else:
                results.append((load, _run_load(system, publisher, dirs, procs, workdir, count, rate,
                                                f"{load}{index}")))
            time.sleep(0.5)
    finally:
        if group is not None:
            group.stop()
        else:
            stop_all(procs)
    out = []
    for load in ("steady", "burst"):
        runs = [r for kind, r in results if kind == load]
        if not runs:
            continue
        per_run = [_summarise(r["latencies"]) | {"all_final_ms": round(r["all_final_ms"], 3),
                                                  "missing": r["missing"], "publish_s": round(r["publish_s"], 2),
                                                  "final_after_last_publish_ms":
                                                      round(r["final_after_last_publish_ms"], 3)}
                   for r in runs]
        row = {"size": size, "system": system, "load": load, "runs": per_run,
               "median_ms": median(r["median_ms"] for r in per_run),
               "p99_ms": median(r["p99_ms"] for r in per_run),
               "all_final_ms": median(r["all_final_ms"] for r in per_run),
               "publish_s": median(r["publish_s"] for r in per_run),
               "final_after_last_publish_ms": median(r["final_after_last_publish_ms"] for r in per_run)}
        log(f"    {load:6} {system:8} n={size:<4} median {row['median_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
            f"all final {row['all_final_ms']:.1f} ms; published in {row['publish_s']:.1f}s")
        out.append(row)
    return out


def _floor_a_load(publisher: Publisher, procs: list[subprocess.Popen[Any]], dirs: list[Path], count: int,
                  rate: float | None, index: int) -> dict[str, Any]:
    """Floor (a) notes receive times itself; each receiver writes its rows when it gets the load's last change."""
    for d in dirs:
        (d / "rows.json").unlink(missing_ok=True)
    first, last = publisher.run(count, rate)
    deadline = time.monotonic() + 120
    while not all((d / "rows.json").exists() for d in dirs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    latencies: list[float] = []
    all_final = 0
    missing = 0
    last_latency = 0
    for d in dirs:
        try:
            rows = json.loads((d / "rows.json").read_text())
        except (OSError, ValueError):
            missing += 1
            continue
        got = {seq: t for t, seq in rows if first <= seq <= last}
        missing += (last - first + 1) - len(got)
        latencies += [(t - publisher.sent[seq]) / 1e6 for seq, t in got.items()]
        if last in got:
            all_final = max(all_final, got[last] - publisher.sent[first])
            last_latency = max(last_latency, got[last] - publisher.sent[last])
    return {"latencies": latencies, "all_final_ms": all_final / 1e6, "missing": missing,
            "publish_s": publisher.last_seconds, "final_after_last_publish_ms": last_latency / 1e6}


__all__ = ["run"]
