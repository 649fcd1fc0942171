"""The floors of the propagation benchmark: plain redis-py subscribers, the least code that does the job.

`python -m bench.floors receive HOST PORT CHANNEL DIR` — (a): only receive, noting (t_ns, payload) per
message; when a change marked `"end": true` arrives (a load's last), write DIR/rows.json: [[t_ns, seq], ...].
`python -m bench.floors write HOST PORT CHANNEL DIR` — (b): receive, and for every message write
DIR/data.json ({"bench": value}) by temp file + rename.
Both stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import redis


def main() -> int:
    mode, host, port, channel, target = sys.argv[1:6]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pubsub = redis.Redis(host=host, port=int(port)).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    if mode == "receive":
        got: list[tuple[int, bytes]] = []
        for message in pubsub.listen():
            got.append((time.monotonic_ns(), message["data"]))
            if b'"end":true' in message["data"]:
                rows = [[t, json.loads(raw)["value"]["seq"]] for t, raw in got]
                with open(os.path.join(target, ".rows.tmp"), "w") as handle:
                    json.dump(rows, handle)
                os.replace(os.path.join(target, ".rows.tmp"), os.path.join(target, "rows.json"))
                got.clear()
    else:
        path = os.path.join(target, "data.json")
        temp = os.path.join(target, ".data.json.tmp")
        for message in pubsub.listen():
            value = json.loads(message["data"])["value"]
            with open(temp, "wb") as handle:
                handle.write(json.dumps({"bench": value}).encode())
            os.replace(temp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
