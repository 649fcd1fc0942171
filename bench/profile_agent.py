"""Profile one real agent's hot path with py-spy while it applies changes (not part of `make bench`).

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile_agent --rate 50 --seconds 15     # one change per batch (steady)
    .venv/bin/python -m bench.profile_agent --rate 500 --seconds 15    # the footprint load

Prints the functions with the most samples, inclusive and self, from py-spy's collapsed stacks,
and the agent's CPU per change. `--out DIR` keeps the raw stacks and a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import AgentGroup, cpu_seconds, ensure_initialised, local_redis
from bench.propagation import Publisher


def top(collapsed: Path, limit: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(limit)]
    lines += ["self:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(limit)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="frontfleet-bench-profile-") as tmp:
        work = Path(tmp)
        with local_redis(work).start() as redis:
            ensure_initialised(redis.client())
            group = AgentGroup(redis, work)
            try:
                (agent,) = group.add(1)
                group.wait_ready()
                assert agent.process is not None
                pid = agent.process.pid
                collapsed = work / "stacks.txt"
                spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "250",
                                        "-f", "raw", "-o", str(collapsed), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                publisher = Publisher(redis)
                cpu0 = cpu_seconds(pid)
                count = int(args.rate * (args.seconds - 2))
                thread = threading.Thread(target=publisher.run, args=(count, args.rate))
                thread.start()
                thread.join()
                cpu = cpu_seconds(pid) - cpu0
                spy.wait(timeout=args.seconds + 30)
                print(f"agent CPU: {cpu:.2f}s for {count} changes = {1e6 * cpu / count:.0f} us per change")
                print(top(collapsed, args.limit))
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(collapsed, args.out / "stacks.txt")
                    (args.out / "summary.json").write_text(json.dumps({"rate": args.rate, "cpu_s": cpu,
                                                                       "changes": count}))
            finally:
                group.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
