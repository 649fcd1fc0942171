"""Benchmark 4, agent footprint: RSS and CPU of one real agent idle, and while applying changes at a rate.

CPU is utime + stime from /proc/<pid>/stat over the window; RSS is VmRSS (and PSS) sampled every
100 ms, the peak reported. Same-run baseline: a floor (b) subscriber (bench/floors.py, plain
redis-py writing data.json per message) under the same load.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import KEYS, AgentGroup, cpu_seconds, ensure_initialised, local_redis, pss_bytes, rss_bytes, stop_all
from bench.propagation import Publisher
from tests.servers import RedisServer


def _watch_memory(pid: int, stop: threading.Event, peak: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            peak["rss"] = max(peak.get("rss", 0), rss_bytes(pid))
            peak["pss"] = max(peak.get("pss", 0), pss_bytes(pid))
        except OSError:
            return
        stop.wait(0.1)


def _window(pid: int, seconds: float, publisher: Publisher | None, rate: float) -> dict[str, Any]:
    stop = threading.Event()
    peak: dict[str, int] = {}
    watcher = threading.Thread(target=_watch_memory, args=(pid, stop, peak))
    watcher.start()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    count = 0
    try:
        if publisher is None:
            time.sleep(seconds)
        else:
            count = int(rate * seconds)
            publisher.run(count, rate)
            time.sleep(0.5)  # the last batch
    finally:
        stop.set()
        watcher.join()
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    body = {"seconds": round(wall, 2), "cpu_s": round(cpu, 3), "cpu_percent": round(100 * cpu / wall, 2),
            "rss_mb_peak": round(peak.get("rss", 0) / 2**20, 1), "pss_mb_peak": round(peak.get("pss", 0) / 2**20, 1)}
    if count:
        body |= {"changes": count, "cpu_us_per_change": round(1e6 * cpu / count, 1)}
    return body


def run(idle_seconds: float, load_seconds: float, rate: float, workdir: Path, log: Any = print) -> dict[str, Any]:
    with local_redis(workdir).start() as redis:
        ensure_initialised(redis.client())
        group = AgentGroup(redis, workdir)
        try:
            (agent,) = group.add(1)
            group.wait_ready()
            assert agent.process is not None
            pid = agent.process.pid
            time.sleep(2.0)  # past start-up
            idle = _window(pid, idle_seconds, None, rate)
            log(f"  footprint: idle {idle}")
            loaded = _window(pid, load_seconds, Publisher(redis), rate)
            log(f"  footprint: {rate:g} changes/s {loaded}")
        finally:
            group.stop()
        floor = _floor(redis, workdir, load_seconds, rate)
        log(f"  footprint: floor (b) at {rate:g} changes/s {floor}")
    return {"config": {"idle_seconds": idle_seconds, "load_seconds": load_seconds, "rate_per_s": rate,
                       "templates": "templates/ (env.js.j2)", "log_level": "info"},
            "idle": idle, "loaded": loaded, "floor_b_loaded": floor,
            "cpu_vs_floor_b": round(loaded["cpu_s"] / floor["cpu_s"], 2) if floor["cpu_s"] else None,
            "targets": {"rss_under_40mb": max(idle["rss_mb_peak"], loaded["rss_mb_peak"]) < 40,
                        "idle_cpu_near_zero": idle["cpu_percent"] < 0.5}}


def _floor(redis: RedisServer, workdir: Path, seconds: float, rate: float) -> dict[str, Any]:
    target = workdir / "footprint-floor-b"
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.floors", "write", redis.host, str(redis.port), KEYS.events,
                             str(target)], stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
    try:
        client = redis.client()
        deadline = time.monotonic() + 30
        while int(client.pubsub_numsub(KEYS.events)[0][1]) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        return _window(proc.pid, seconds, Publisher(redis), rate)
    finally:
        stop_all([proc])
