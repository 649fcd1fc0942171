"""An nftables table that lets only one host's processes open connections to an address and port: the hosts share
the controller's network namespace, so a rule on the sending socket's cgroup (`socket cgroupv2`) is the one way
to say "only the jump host reaches this host's sshd". Needs nftables and a cgroup2 hierarchy."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleet.cgroups import HostCgroup
from fleet.system import FleetError, run

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")  # nft names a cgroup by its path below this


@contextmanager
def only_from(source: HostCgroup, address: str, port: int, *, table: str) -> Iterator[None]:
    """Drop new TCP connections to address:port unless the socket belongs to source's cgroup (or one below it)."""
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        raise FleetError("nft is missing: apt-get install nftables (make system-deps installs it)")
    if source.unified is None:
        raise FleetError("a host's cgroup2 directory is needed for the nftables cgroup match")
    mount = next(parent for parent in source.unified.parents if (parent / "cgroup.controllers").exists()
                 and not (parent.parent / "cgroup.controllers").exists())
    level = len(source.unified.relative_to(mount).parts)
    name = source.unified.relative_to(CGROUP_ROOT).as_posix()
    run(["nft", "delete", "table", "inet", table], check=False)  # what a killed run of this fleet left
    script = (f"table inet {table} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n"
              f"    ip daddr {address} tcp dport {port} socket cgroupv2 level {level} \"{name}\" accept\n"
              f"    ip daddr {address} tcp dport {port} drop\n  }}\n}}\n")
    run(["nft", "-f", "-"], input_text=script)
    try:
        yield
    finally:
        run(["nft", "delete", "table", "inet", table], check=False)
