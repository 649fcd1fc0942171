"""One cgroup per host, so that hosts do not share a cgroup tree and can be frozen or killed whole.

The controller's PID 1 is not systemd, so nspawn runs with --keep-unit in the caller's cgroup and
creates `supervisor/` and `payload/` right there. Left alone, every container would get the *same*
`payload/` — and each container's systemd would manage the same `system.slice/ssh.service` cgroup
as its neighbours (one host stopping a unit could kill another host's processes; units fail with
219/CGROUP). So each nspawn is moved, before it execs, into its own cgroup
`<our cgroup>/frontfleet/<fleet>/<host>` in every hierarchy systemd uses: the cgroup2 (unified)
hierarchy and, on a hybrid set-up like this machine's, the v1 `name=systemd` one.

The cgroup2 directory then gives two faults for free: `cgroup.freeze` (a hung host, atomically)
and `cgroup.kill` (the plug pulled: every process of the host at once).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fleet.system import FleetError

log = logging.getLogger(__name__)


def _hierarchies() -> list[tuple[Path, bool]]:
    """(directory of this process's cgroup, is_cgroup2) for the unified and name=systemd hierarchies."""
    ours: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if hierarchy_id == "0":
            ours["cgroup2"] = path
        elif controllers == "name=systemd":
            ours["name=systemd"] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, fs_type, options = fields[4], fields[-3], fields[-1]
        if fs_type == "cgroup2" and "cgroup2" in ours:
            found.append((Path(mount_point + ours["cgroup2"]), True))
        elif fs_type == "cgroup" and "name=systemd" in options.split(",") and "name=systemd" in ours:
            found.append((Path(mount_point + ours["name=systemd"]), False))
    return found


class HostCgroup:
    """The cgroup directories of one host (one per hierarchy)."""

    def __init__(self, fleet: str, host: str) -> None:
        self.dirs = [(parent / "frontfleet" / fleet / host, unified) for parent, unified in _hierarchies()]
        self.unified = next((path for path, unified in self.dirs if unified), None)

    def create(self) -> None:
        for path, _ in self.dirs:
            path.mkdir(parents=True, exist_ok=True)

    def enter(self) -> None:
        """Move the calling process in (meant for Popen's preexec_fn, between fork and exec)."""
        for path, _ in self.dirs:
            (path / "cgroup.procs").write_text("0\n")

    def procs(self) -> list[int]:
        """Every process of the host, in any sub-cgroup (nspawn, the container's init and services)."""
        found: set[int] = set()
        for path, _ in self.dirs:
            for procs in path.rglob("cgroup.procs") if path.is_dir() else []:
                try:
                    found.update(int(pid) for pid in procs.read_text().split())
                except OSError:
                    continue
        return sorted(found)

    def _require_unified(self, what: str) -> Path:
        if self.unified is None or not (self.unified / "cgroup.freeze").exists():
            raise FleetError(f"{what} needs a cgroup2 hierarchy with cgroup.freeze/cgroup.kill (Linux >= 5.14)")
        return self.unified

    def freeze(self, frozen: bool = True, timeout: float = 10.0) -> None:
        """Freeze (or thaw) every process of the host and wait until the kernel says it is done."""
        unified = self._require_unified("freezing a host")
        (unified / "cgroup.freeze").write_text("1\n" if frozen else "0\n")
        deadline = time.monotonic() + timeout
        while self.frozen() != frozen:
            if time.monotonic() > deadline:
                raise FleetError(f"{unified} did not {'freeze' if frozen else 'thaw'} in {timeout:.0f} s")
            time.sleep(0.02)

    def frozen(self) -> bool:
        if self.unified is None or not (self.unified / "cgroup.events").exists():
            return False
        events = dict(line.split() for line in (self.unified / "cgroup.events").read_text().splitlines())
        return events.get("frozen") == "1"

    def kill(self) -> None:
        """SIGKILL every process of the host at once (no process can fork its way out)."""
        unified = self._require_unified("killing a host")
        if unified.is_dir():
            (unified / "cgroup.kill").write_text("1\n")

    def remove(self) -> None:
        """Remove the host's cgroup directories once they hold no process (bottom-up, as rmdir needs)."""
        for path, _ in self.dirs:
            if not path.is_dir():
                continue
            for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(sub)
            _rmdir(path)
            for parent in (path.parent, path.parent.parent):  # <fleet>/ and frontfleet/, if now empty
                _rmdir(parent)


def _rmdir(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError as err:
        log.debug("cannot remove cgroup %s yet: %s", path, err)
