"""Benchmark 5, fleet scale: more and more real agents against one Redis.

At each step the agents are topped up to the step's count, then a steady load is published and
measured as in benchmark 1 (watchers on data.json). Reported per step: p50/p99 propagation,
Redis CPU during the load (utime + stime of redis-server), the agents' summed PSS and RSS, and how
many agents 12 GB would hold at that PSS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import AgentGroup, cpu_seconds, ensure_initialised, local_redis, percentile, pss_bytes, rss_bytes
from bench.propagation import Publisher, _collect_watchers, _latencies_from_observations, _watch, stop_all

MEMORY_BUDGET = 12 * 2**30


def run(steps: list[int], changes: int, rate: float, workdir: Path, log: Any = print) -> dict[str, Any]:
    rows = []
    with local_redis(workdir).start() as redis:
        ensure_initialised(redis.client())
        group = AgentGroup(redis, workdir)
        assert redis.process is not None
        redis_pid = redis.process.pid
        try:
            for step in steps:
                start = time.monotonic()
                new = group.add(step - len(group.agents))
                group.wait_ready(new, timeout=600)
                startup = time.monotonic() - start
                time.sleep(2.0)
                idle_cpu0, idle_t0 = cpu_seconds(redis_pid), time.monotonic()
                time.sleep(3.0)
                redis_idle = (cpu_seconds(redis_pid) - idle_cpu0) / (time.monotonic() - idle_t0)
                publisher = Publisher(redis)
                watchers = _watch([a.shared for a in group.agents], workdir, f"scale{step}")
                try:
                    cpu0, t0 = cpu_seconds(redis_pid), time.monotonic()
                    first, last = publisher.run(changes, rate)
                    redis_cpu = (cpu_seconds(redis_pid) - cpu0) / (time.monotonic() - t0)
                    observations = _collect_watchers(watchers, last, 120)
                finally:
                    stop_all([w for w, _ in watchers])
                latencies, all_final, missing = _latencies_from_observations(observations, publisher.sent, first, last)
                pids = group.pids()
                pss = sum(pss_bytes(p) for p in pids)
                rss = sum(rss_bytes(p) for p in pids)
                row = {"agents": step, "startup_s": round(startup, 1), "median_ms": round(percentile(latencies, 50), 2),
                       "p99_ms": round(percentile(latencies, 99), 2), "missing": missing,
                       "redis_cpu_percent_load": round(100 * redis_cpu, 1),
                       "redis_cpu_percent_idle": round(100 * redis_idle, 1),
                       "agents_pss_mb": round(pss / 2**20), "agents_rss_mb": round(rss / 2**20),
                       "pss_mb_per_agent": round(pss / step / 2**20, 1),
                       "fit_in_12gb": int(MEMORY_BUDGET / (pss / step)),
                       "loadavg": round(__import__("os").getloadavg()[0], 1)}
                log(f"  scale {step:4} agents: p50 {row['median_ms']} ms p99 {row['p99_ms']} ms, redis CPU "
                    f"{row['redis_cpu_percent_load']}% (idle {row['redis_cpu_percent_idle']}%), "
                    f"PSS {row['pss_mb_per_agent']} MB/agent, up in {row['startup_s']}s")
                rows.append(row)
        finally:
            group.stop()
    return {"config": {"steps": steps, "changes_per_step": changes, "rate_per_s": rate}, "rows": rows}
