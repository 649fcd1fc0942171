"""Cached Debian base images that the fleet's hosts boot from (as the lower layer of an overlay).

Two bases live under the cache directory (`/var/cache/frontfleet/`, or `$FRONTFLEET_CACHE`):

* **bare** — exactly what `debootstrap --variant=minbase --include=…` gives, so that the roles'
  install path is tested against a host that has nothing yet;
* **provisioned** — bare plus the packages the roles install, so most tests boot fast and offline.
  Its directory name carries a hash of its recipe: change the package list, get a new base.

A base is built in a temporary directory and renamed into place, under a lock file, so an
interrupted build never leaves a half base and two processes never build the same one at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fleet.cgroups import HostCgroup
from fleet.system import FleetError, remove_tree, run, wait_gone

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BARE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "ca-certificates")
#: What the roles install (python3-venv, nginx, redis-server), rsync for benchmarks, sudo for `deploy`.
PROVISIONED_PACKAGES = ("python3-venv", "nginx", "redis-server", "rsync", "sudo")
#: The non-root user with passwordless sudo that the provisioned base carries.
DEPLOY_USER = "deploy"
BASE_KINDS = ("bare", "provisioned")

# Applied to every base after debootstrap. Host keys and the machine id are made per host by the
# harness (a shared base must not give every host the same identity); the getty on the console
# only clutters the boot log, and the apt timers would run apt on every host at once.
_CLEAN_SCRIPT = """
set -e
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
systemctl mask console-getty.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer >/dev/null 2>&1
"""

# The provisioned base: packages installed with a policy-rc.d that forbids starting services (the
# hosts share the controller's network namespace, so a packaged nginx on 0.0.0.0:80 or a Redis on
# 127.0.0.1:6379 would collide), then the packaged services disabled (not masked: the roles enable
# them with their own config) and nginx's default site removed.
_PROVISION_SCRIPT = f"""
set -e
export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
apt-get install -y -q {" ".join(PROVISIONED_PACKAGES)}
systemctl disable nginx.service redis-server.service
rm -f /etc/nginx/sites-enabled/default
useradd --create-home --shell /bin/bash {DEPLOY_USER}
echo '{DEPLOY_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{DEPLOY_USER}
chmod 440 /etc/sudoers.d/{DEPLOY_USER}
visudo -cf /etc/sudoers.d/{DEPLOY_USER}
rm -f /usr/sbin/policy-rc.d
apt-get clean
"""


def cache_dir() -> Path:
    return Path(os.environ.get("FRONTFLEET_CACHE", "/var/cache/frontfleet"))


def _recipe_hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def base_path(kind: str) -> Path:
    """Where a base lives in the cache; the name changes whenever its recipe does."""
    bare_key = _recipe_hash(SUITE, MIRROR, *BARE_INCLUDE, _CLEAN_SCRIPT)
    if kind == "bare":
        return cache_dir() / f"bare-{SUITE}-{bare_key}"
    if kind == "provisioned":
        return cache_dir() / f"provisioned-{SUITE}-{_recipe_hash(bare_key, _PROVISION_SCRIPT)}"
    raise FleetError(f"unknown base {kind!r}; use one of {', '.join(BASE_KINDS)}")


def ensure_base(kind: str) -> Path:
    """The path of a ready base, building it (and the bare base below it) on first use."""
    path = base_path(kind)
    if path.is_dir():
        return path
    with _build_lock():
        if path.is_dir():  # another process built it while we waited for the lock
            return path
        _remove_interrupted_builds()
        return ensure_base_locked(kind)


def ensure_base_locked(kind: str) -> Path:
    """ensure_base for a caller that already holds the build lock: a provisioned base is built on the bare one."""
    path = base_path(kind)
    if not path.is_dir():
        if kind == "provisioned":
            bare = ensure_base_locked("bare")
            _build(path, lambda tmp: _provision(bare, tmp))
        else:
            _build(path, _debootstrap)
    return path


@contextmanager
def _build_lock() -> Iterator[None]:
    """One builder at a time per cache; a second process waits, then finds the base built."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building a base in %s; waiting for it", cache_dir())
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_interrupted_builds() -> None:
    """Temp dirs of a build that was killed (we hold the lock, so no build is running)."""
    for stale in cache_dir().glob(".build-*"):
        log.info("removing interrupted build %s", stale)
        remove_tree(stale)


def _build(path: Path, make: Callable[[Path], None]) -> None:
    """Build into a temp dir beside `path`, then rename it into place (atomic on one filesystem)."""
    tmp = path.with_name(f".build-{path.name}-{os.getpid()}")
    started = time.monotonic()
    log.info("building base %s (this takes a few minutes, once)", path.name)
    try:
        make(tmp)
        tmp.rename(path)
    finally:
        remove_tree(tmp)
    log.info("built base %s in %.0f s", path.name, time.monotonic() - started)


def _debootstrap(tmp: Path) -> None:
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BARE_INCLUDE)}", SUITE, tmp, MIRROR],
        timeout=1800)
    _in_root(tmp, _CLEAN_SCRIPT)


def _provision(bare: Path, tmp: Path) -> None:
    # A full copy rather than an overlay: hosts then stack one overlay on one plain directory.
    run(["cp", "-a", "--reflink=auto", bare, tmp])
    _in_root(tmp, _PROVISION_SCRIPT, timeout=1800)


def _in_root(root: Path, script: str, timeout: float = 300) -> None:
    """Run a shell script inside a root tree (not booted); nspawn gives it /proc, /dev and DNS and
    keeps their mounts in its own namespace, so nothing is left mounted if the build is killed."""
    log_file = cache_dir() / "build.log"
    cgroup = HostCgroup("images", f"build-{os.getpid()}")  # not the caller's cgroup: see fleet/cgroups.py
    cgroup.create()
    try:
        proc = subprocess.run(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--as-pid2",
             f"--machine=ffbuild-{os.getpid()}", "--resolv-conf=copy-host", "-D", str(root), "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=cgroup.enter,
            check=False)
    finally:
        if cgroup.procs():  # a timeout killed nspawn, not the container
            cgroup.kill()
            wait_gone(cgroup.procs(), 10)
        cgroup.remove()
    with log_file.open("a") as out:
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise FleetError(f"building {root.name} failed ({proc.returncode}); see {log_file}:\n{proc.stderr[-2000:]}")
