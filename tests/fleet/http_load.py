"""Steady HTTP load on a fleet's web hosts, recording every request a user would have seen fail.

A test names the phase it is in (`load.phase = "deploy.yml"`), so a failure says when it happened. The load
is bounded in requests and in time and stops by itself; it only ever targets the fleet's loopback addresses.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

#: Pause between two requests of one thread: enough load to catch a gap of a few ms at any host (a request
#: every few ms per host), little enough to leave the 2 cores to ansible-playbook and the hosts.
PAUSE = 0.01


@dataclass(frozen=True)
class Failure:
    """One request that did not get a 200: when, in which phase, what, and what came back."""

    at: str  # wall clock, for matching the hosts' journals
    elapsed: float  # seconds since the load started
    phase: str
    url: str
    error: str

    def __str__(self) -> str:
        return f"{self.at} (+{self.elapsed:.3f} s, {self.phase}) {self.url}: {self.error}"


class HttpLoad:
    """GET every url in turn from `threads` threads until stop(), `max_seconds` or `max_requests`."""

    def __init__(self, urls: list[str], *, threads: int = 2, max_seconds: float = 300, max_requests: int = 60_000,
                 timeout: float = 5) -> None:
        if not all(url.startswith("http://127.") for url in urls):
            raise ValueError(f"the load only targets the fleet's loopback addresses, not {urls}")
        self.urls = urls
        self.phase = "start"
        self.failures: list[Failure] = []
        self.requests: Counter[tuple[str, str]] = Counter()  # (phase, url) → requests sent
        self.stopped_by = ""  # "stop()", "max_seconds" or "max_requests"
        self._threads = [threading.Thread(target=self._run, args=(offset,), name=f"http-load-{offset}", daemon=True)
                         for offset in range(threads)]
        self._max_seconds, self._max_requests, self._timeout = max_seconds, max_requests, timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = 0.0

    def __enter__(self) -> HttpLoad:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self.stopped_by = self.stopped_by or "stop()"
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def count(self, phase: str) -> Counter[str]:
        """Requests sent per url in one phase."""
        return Counter({url: n for (p, url), n in self.requests.items() if p == phase})

    def _run(self, offset: int) -> None:
        index = offset
        while not self._stop.is_set():
            url = self.urls[index % len(self.urls)]
            index += 1
            phase = self.phase
            if not self._admit(phase, url):
                return
            error = self._get(url)
            if error:
                elapsed = time.monotonic() - self._started
                failure = Failure(datetime.now().isoformat(timespec="milliseconds"), elapsed, phase, url, error)
                with self._lock:
                    self.failures.append(failure)
            self._stop.wait(PAUSE)

    def _admit(self, phase: str, url: str) -> bool:
        """Count the request, or stop the load when one of its bounds is reached."""
        with self._lock:
            if time.monotonic() - self._started > self._max_seconds:
                self.stopped_by = self.stopped_by or "max_seconds"
            elif sum(self.requests.values()) >= self._max_requests:
                self.stopped_by = self.stopped_by or "max_requests"
            else:
                self.requests[phase, url] += 1
                return True
        self._stop.set()
        return False

    def _get(self, url: str) -> str:
        """"" for a 200 with its whole body read, else what went wrong."""
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                response.read()
                return "" if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            return f"HTTP {err.code}"
        except (OSError, urllib.error.URLError) as err:
            return f"{type(err).__name__}: {err}"
