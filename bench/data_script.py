"""What the data script's caps cost: Redis time per `data set` as the data set grows, against a plain HSET.

    .venv/bin/python -m bench.data_script

lua/data.lua sums the hash's size on every set (docs/protocol.md, "Limits"), so its cost grows with the number
of keys. Baseline, measured in the same run: HSET + PUBLISH of the same value in one MULTI, which is what the
script would cost with no checks at all. The figures are Redis' own (INFO commandstats, µs per call), so the
client's round trip and this machine's load stay out of them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import local_redis
from tests.servers import new_store

SIZES = (10, 100, 1000)
CHANGES = 500
VALUE = '"' + "x" * 100 + '"'


def _usec_per_call(client, command: str) -> float:
    return float(client.info("commandstats").get(f"cmdstat_{command}", {}).get("usec_per_call", 0.0))


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir, local_redis(Path(workdir)) as server:
        client = server.client()
        store = new_store(client, "bench")
        print(f"{'keys':>6} {'data.lua µs/set':>16} {'HSET+PUBLISH µs':>16} {'ratio':>6}")
        for size in SIZES:
            client.flushall()
            for n in range(size):
                store.data_set(f"k{n}", VALUE)
            client.config_resetstat()
            for n in range(CHANGES):
                store.data_set("k0", str(n))
            script = _usec_per_call(client, "evalsha")
            client.config_resetstat()
            for n in range(CHANGES):
                pipe = client.pipeline(transaction=True)
                pipe.hset("bench:data", "k0", str(n))
                pipe.publish("bench:events", str(n))
                pipe.execute()
            plain = _usec_per_call(client, "hset") + _usec_per_call(client, "publish")
            print(f"{size:>6} {script:>16.1f} {plain:>16.1f} {script / plain:>6.1f}")


if __name__ == "__main__":
    main()
