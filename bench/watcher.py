"""Watch directories for `data.json` being renamed into place (inotify IN_MOVED_TO) and note when.

`python -m bench.watcher OUT DIR...`: prints `ready` once every watch is set, then reads commands on stdin:
`final SEQ TIMEOUT` makes it exit once every directory's data.json holds seq >= SEQ (or after TIMEOUT
seconds); then it writes OUT: {dir: [[t_ns, seq], ...]} with t_ns on CLOCK_MONOTONIC.

On each event the file is read and its `bench.seq` noted with the time the event was read. The file
then holds that seq or a later one, so the time is an upper bound for "this seq was in place", and
the same bound is used for the agents and for floor (b), which both write by temp file + rename.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import struct
import sys
import time

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")
NAME = b"data.json"


def read_seq(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return int(json.loads(handle.read())["bench"]["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def main() -> int:
    out, dirs = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    by_wd: dict[int, str] = {}
    for directory in dirs:
        wd = libc.inotify_add_watch(fd, directory.encode(), IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        by_wd[wd] = directory
    seen: dict[str, list[list[int]]] = {d: [] for d in dirs}
    latest: dict[str, int] = {d: -1 for d in dirs}
    final: int | None = None
    deadline = float("inf")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(sys.stdin.fileno(), select.POLLIN)
    print("ready", flush=True)
    stdin_open = True

    def note(directory: str, when: int) -> None:
        seq = read_seq(os.path.join(directory, "data.json"))
        if seq > latest[directory]:
            latest[directory] = seq
            seen[directory].append([when, seq])

    while True:
        if final is not None and (min(latest.values()) >= final or time.monotonic() > deadline):
            break
        for ready_fd, _ in poller.poll(100):
            if ready_fd == fd:
                try:
                    buffer = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                when = time.monotonic_ns()
                offset = 0
                touched: dict[str, None] = {}  # read each file once per batch of events: it holds the latest
                while offset < len(buffer):
                    wd, mask, _cookie, length = EVENT.unpack_from(buffer, offset)
                    name = buffer[offset + EVENT.size: offset + EVENT.size + length].rstrip(b"\0")
                    offset += EVENT.size + length
                    if mask & IN_Q_OVERFLOW:
                        for directory in dirs:
                            note(directory, when)
                    elif name == NAME:
                        touched[by_wd[wd]] = None
                for directory in touched:
                    note(directory, when)
            elif stdin_open:
                line = sys.stdin.readline()
                if not line:
                    stdin_open = False
                    poller.unregister(sys.stdin.fileno())
                    final, deadline = final if final is not None else -1, time.monotonic()
                    continue
                words = line.split()
                if words and words[0] == "final":
                    final, deadline = int(words[1]), time.monotonic() + float(words[2])
    with open(out, "w") as handle:
        json.dump({"observations": seen, "latest": latest}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
