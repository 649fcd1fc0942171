"""A local fleet of real systemd hosts: systemd-nspawn containers over overlayfs on a cached base.

Each host is a booted container that shares the controller's network namespace and binds its
sshd to its own loopback address (127.0.1.N), so Ansible, OpenSSH and Fabric reach it exactly as
they reach a production host. Everything a fleet owns lives in its state directory
(`/var/lib/frontfleet-fleet/<name>/` by default), so a later process (the CLI's `down`, or the next
`up` after a crash) can find and clean up what an earlier one started:

    <state>/fleet.json          the fleet: name, subnet, sshd port, base, hosts
    <state>/id_ed25519[.pub]    the fleet's SSH key (generated, never committed)
    <state>/known_hosts         the hosts' keys (generated per host by the harness, so no TOFU)
    <state>/ssh_config          `ssh -F <state>/ssh_config web1` works
    <state>/hosts.yml           an Ansible inventory (groups web, redis)
    <state>/hosts/<host>/       up/, wk/, root/ (the overlay), nspawn.pid, nspawn.log
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet import firewall, images
from fleet.cgroups import HostCgroup
from fleet.system import (
    FleetError,
    apt_command,
    cmdline,
    missing_tools,
    mounts_under,
    pid_alive,
    port_free,
    remove_tree,
    run,
    signal_pid,
    ssh_banner,
    unmount_under,
    wait_gone,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/var/lib/frontfleet-fleet")
DEFAULT_SUBNET = "127.0.1"
#: Tried in order when port 22 is taken on a fleet address (e.g. by the controller's own sshd on 0.0.0.0:22).
FALLBACK_PORTS = range(2222, 2300)
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
ROLES = ("web", "redis")
_HOST_NAME = re.compile(r"^(?P<role>[a-z]+)(?P<n>[0-9]+)$")
#: The nspawn processes this Python process started, by pid, whichever Fleet object started them:
#: kept so that they are reaped once stopped (no zombie, no "subprocess still running" warning).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Host:
    """One host of the fleet; `name` is also its hostname and its Ansible inventory_hostname."""

    name: str
    role: str
    address: str

    @property
    def index(self) -> int:
        return int(self.address.rsplit(".", 1)[1])


def state_root() -> Path:
    return Path(os.environ.get("FRONTFLEET_STATE", str(DEFAULT_STATE_ROOT)))


class Fleet:
    """A named fleet of hosts on one /24 of loopback; see the module docstring for its files."""

    def __init__(self, name: str = "demo", *, subnet: str = DEFAULT_SUBNET, root: Path | None = None) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
            raise FleetError(f"fleet name {name!r}: use lowercase letters, digits and '-'")
        if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}", subnet):
            raise FleetError(f"subnet {subnet!r}: the fleet only uses loopback, e.g. 127.0.1")
        self.name = name
        self.subnet = subnet
        self.state_dir = (root or state_root()) / name
        self.port = 22
        self.base = "provisioned"
        self.hosts: dict[str, Host] = {}
        self._load()

    # --- the files other tools read -------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def inventory(self) -> Path:
        return self.state_dir / "hosts.yml"

    def group(self, role: str) -> list[Host]:
        return [host for host in self.hosts.values() if host.role == role]

    # --- lifecycle --------------------------------------------------------------

    def up(self, web: int = 3, redis: int = 1, base: str = "provisioned") -> None:
        """Boot `web` web hosts and `redis` Redis hosts from `base`, after clearing any earlier run."""
        _require_tools()
        if base not in images.BASE_KINDS:
            raise FleetError(f"unknown base {base!r}; use one of {', '.join(images.BASE_KINDS)}")
        started = time.monotonic()
        with self._lock():
            self._clear(graceful=False)  # what an earlier run of this fleet left: its disks are wiped anyway
            base_path = images.ensure_base(base)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.base = base
            names = [f"web{i}" for i in range(1, web + 1)] + [f"redis{i}" for i in range(1, redis + 1)]
            self.hosts = {name: self._new_host(name, index) for index, name in enumerate(names, start=1)}
            self._check_addresses_unclaimed()
            self.port = self._choose_port([host.address for host in self.hosts.values()])
            self._ensure_key()
            try:
                for host in self.hosts.values():
                    self._prepare(host, base_path)
                self._write_client_files()
                self._boot(list(self.hosts.values()))
            except BaseException:
                log.error("fleet %s failed to come up; tearing it down", self.name)
                self._clear(graceful=False)
                raise
        log.info("fleet %s up: %d hosts in %.1f s, sshd on port %d", self.name, len(self.hosts),
                 time.monotonic() - started, self.port)

    def add_host(self, name: str) -> Host:
        """Boot one more host (e.g. web4) on the next free address of the fleet's subnet."""
        match = _HOST_NAME.match(name)
        if match is None or match["role"] not in ROLES:
            raise FleetError(f"host name {name!r}: use web<N> or redis<N>")
        if name in self.hosts:
            raise FleetError(f"{name} is already in fleet {self.name}")
        with self._lock():
            index = max((host.index for host in self.hosts.values()), default=0) + 1
            host = self._new_host(name, index)
            if not port_free(host.address, self.port):
                raise FleetError(f"port {self.port} is taken on {host.address}; cannot add {name}")
            self.hosts[name] = host
            try:
                self._prepare(host, images.base_path(self.base))
                self._write_client_files()
                self._boot([host])
            except BaseException:
                self._remove_host(host.name, graceful=False)
                raise
        return host

    def remove_host(self, name: str) -> None:
        """Undo add_host: power the host off, delete its disk and drop it from ssh_config, the inventory and
        fleet.json."""
        if name not in self.hosts:
            raise FleetError(f"{name} is not in fleet {self.name}")
        with self._lock():
            self._remove_host(name)
            self._write_client_files()

    def down(self) -> None:
        """Power every host off, unmount the overlays and remove the fleet's state directory."""
        with self._lock():
            self._clear()
        log.info("fleet %s is down", self.name)

    # --- fault injection ----------------------------------------------------------

    def power_off(self, name: str, *, force: bool = False) -> None:
        """Shut a host down: SIGTERM to nspawn is a clean poweroff; force pulls the plug (SIGKILL to
        every process of the host through its cgroup; SIGKILL to nspawn alone would leave the
        container running, orphaned)."""
        host_dir = self._host_dir(name)
        pid = self._nspawn_pid(host_dir)
        if pid is None:
            return
        cgroup = self._cgroup(name)
        if force:
            cgroup.kill()
        else:
            cgroup.freeze(False)  # a frozen host cannot shut down
        _stop_nspawn(pid, cgroup)
        (host_dir / "nspawn.pid").unlink(missing_ok=True)
        log.info("%s powered off%s", name, " (forced)" if force else "")

    def power_on(self, name: str) -> None:
        """Boot a powered-off host again on the same overlay, as a reboot keeps the disk."""
        if self.is_running(name):
            return
        self._boot([self.hosts[name]])

    def freeze(self, name: str) -> None:
        """Make a host hang: freeze every process of it (cgroup freezer). Its TCP ports still accept
        connections (the kernel does that) but nothing answers, as on a real hung host."""
        self._cgroup(name).freeze(True)
        log.info("%s frozen", name)

    def thaw(self, name: str) -> None:
        """Undo freeze()."""
        self._cgroup(name).freeze(False)
        log.info("%s thawed", name)

    @contextmanager
    def reachable_only_through(self, target: str, jump: str, port: int | None = None) -> Iterator[None]:
        """While inside, new TCP connections to target's sshd are dropped unless they come from jump's cgroup: the
        hosts share the controller's network, so this is what makes "reachable only through a jump host" real
        (an nftables `socket cgroupv2` match on the host's own cgroup). The table is this fleet's; it goes on
        exit, also after a failure."""
        with firewall.only_from(self._cgroup(jump), self.hosts[target].address, port or self.port,
                                table=f"frontfleet_{self.name}".replace("-", "_")):
            log.info("%s reachable only through %s", target, jump)
            yield

    def is_running(self, name: str) -> bool:
        return self._nspawn_pid(self._host_dir(name)) is not None

    def is_frozen(self, name: str) -> bool:
        return self._cgroup(name).frozen()

    # --- reaching the hosts ----------------------------------------------------------

    def ssh(self, host: str, command: str | Sequence[str], *, user: str = "root", timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command on a host through OpenSSH with the fleet's ssh_config (as Ansible would)."""
        remote = command if isinstance(command, str) else shlex.join(command)
        args = ["ssh", "-F", str(self.ssh_config), "-l", user, host, remote]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL)

    def write_inventory(self, path: Path | str | None = None, *, user: str = "root") -> Path:
        """Write an Ansible inventory (groups web and redis) for the fleet; a non-root user gets become."""
        target = Path(path) if path is not None else self.inventory
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, self._inventory_text(user))
        return target

    def status(self) -> list[dict[str, str | int]]:
        """One row per host: name, role, address, port, state (running, frozen, off)."""
        rows: list[dict[str, str | int]] = []
        for host in self.hosts.values():
            state = "off"
            if self.is_running(host.name):
                state = "frozen" if self.is_frozen(host.name) else "running"
            rows.append({"name": host.name, "role": host.role, "address": host.address,
                         "port": self.port, "state": state})
        return rows

    def pids(self) -> list[int]:
        """Every process of the fleet: nspawn and the containers' (for tests that check teardown)."""
        return sorted({pid for name in self.hosts for pid in self._cgroup(name).procs()})

    # --- internals: state --------------------------------------------------------------

    def _load(self) -> None:
        """Pick up a fleet that an earlier process booted (for down, status, or cleaning a crash)."""
        state_file = self.state_dir / "fleet.json"
        if not state_file.is_file():
            return
        data = json.loads(state_file.read_text())
        self.subnet, self.port, self.base = data["subnet"], data["port"], data["base"]
        self.hosts = {row["name"]: Host(**row) for row in data["hosts"]}

    def _save(self) -> None:
        data = {"name": self.name, "subnet": self.subnet, "port": self.port, "base": self.base,
                "hosts": [asdict(host) for host in self.hosts.values()]}
        _write_atomic(self.state_dir / "fleet.json", json.dumps(data, indent=2) + "\n")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down/add_host on one fleet across processes."""
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir.parent / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _new_host(self, name: str, index: int) -> Host:
        if not 1 <= index <= 254:
            raise FleetError(f"no address left in {self.subnet}.0/24 for {name}")
        match = _HOST_NAME.match(name)
        assert match is not None
        return Host(name=name, role=match["role"], address=f"{self.subnet}.{index}")

    def _host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def _nspawn_pid(self, host_dir: Path) -> int | None:
        """The recorded nspawn pid, but only if that pid is still our nspawn for this host's root
        (a pid from a crashed run may have been reused by an unrelated process)."""
        try:
            pid = int((host_dir / "nspawn.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _is_our_nspawn(pid, host_dir / "root") else None

    def _cgroup(self, name: str) -> HostCgroup:
        return HostCgroup(self.name, name)

    # --- internals: set-up -------------------------------------------------------------

    def _check_addresses_unclaimed(self) -> None:
        """Refuse to boot on addresses that another running fleet uses (its sshd, nginx, Redis would clash)."""
        ours = {host.address for host in self.hosts.values()}
        for other_state in self.state_dir.parent.glob("*/fleet.json"):
            if other_state.parent == self.state_dir:
                continue
            other = Fleet(other_state.parent.name, root=self.state_dir.parent)
            clash = sorted(ours & {h.address for h in other.hosts.values() if other.is_running(h.name)})
            if clash:
                raise FleetError(f"fleet {other.name} already runs hosts on {', '.join(clash)}; "
                                 f"stop it (python -m fleet down --name {other.name}) or use another subnet")

    def _choose_port(self, addresses: list[str]) -> int:
        """Port 22 if it is free on every address, else the first fallback port that is."""
        candidates: list[int] = [22, *FALLBACK_PORTS]
        for port in candidates:
            if all(port_free(address, port) for address in addresses):
                if port != 22:
                    log.warning("port 22 is taken on the fleet's addresses (the controller's sshd on 0.0.0.0:22?);"
                                " the fleet's sshd listens on port %d", port)
                return port
        raise FleetError(f"no free sshd port on {addresses}: 22 and {FALLBACK_PORTS.start}-{FALLBACK_PORTS.stop - 1}"
                         " are all taken")

    def _ensure_key(self) -> None:
        if not self.key_path.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"frontfleet-{self.name}", "-f", self.key_path])

    def _prepare(self, host: Host, base_path: Path) -> None:
        """Mount the host's overlay and give it its identity: hostname, machine id, host key, sshd
        address and port, and the fleet key for root (and for `deploy` where the base has that user)."""
        host_dir = self._host_dir(host.name)
        for part in ("up", "wk", "root"):
            (host_dir / part).mkdir(parents=True, exist_ok=True)
        root = host_dir / "root"
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base_path},upperdir={host_dir / 'up'},workdir={host_dir / 'wk'}", root])
        (root / "etc/hostname").write_text(host.name + "\n")
        (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n"
                                        "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        host_key = root / "etc/ssh/ssh_host_ed25519_key"
        host_key.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", host_key])
        (root / "etc/ssh/sshd_config.d/listen.conf").write_text(
            "# Written by the frontfleet fleet harness: the hosts share the controller's network namespace.\n"
            f"ListenAddress {host.address}\nPort {self.port}\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n")
        public_key = self.key_path.with_suffix(".pub").read_text()
        _install_authorized_key(root, "root", public_key)
        if _user_in_root(root, images.DEPLOY_USER) is not None:
            _install_authorized_key(root, images.DEPLOY_USER, public_key)

    def _write_client_files(self) -> None:
        """known_hosts from the host keys the harness made, ssh_config, the inventory, fleet.json."""
        port_suffix = "" if self.port == 22 else f":{self.port}"
        lines = []
        for host in self.hosts.values():
            key = (self._host_dir(host.name) / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            pattern = host.address if self.port == 22 else f"[{host.address}]{port_suffix}"
            lines.append(f"{pattern} {key[0]} {key[1]}\n")
        _write_atomic(self.known_hosts, "".join(lines))
        _write_atomic(self.ssh_config, self._ssh_config_text())
        self.write_inventory()
        self._save()

    def _ssh_options(self) -> dict[str, str]:
        return {
            "Port": str(self.port),
            "User": "root",
            "IdentityFile": str(self.key_path),
            "IdentitiesOnly": "yes",
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "BatchMode": "yes",
            "ConnectTimeout": "5",
            "LogLevel": "ERROR",
        }

    def _ssh_config_text(self) -> str:
        text = f"# Generated by the frontfleet fleet harness for fleet {self.name}; rewritten on every up.\n"
        for host in self.hosts.values():
            text += f"\nHost {host.name}\n    HostName {host.address}\n"
            text += "".join(f"    {key} {value}\n" for key, value in self._ssh_options().items())
        return text

    def _inventory_text(self, user: str) -> str:
        common_args = (f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                       "-o IdentitiesOnly=yes")
        text = f"# Generated by the frontfleet fleet harness for fleet {self.name}.\nall:\n  children:\n"
        for role in ROLES:
            members = self.group(role)
            text += f"    {role}:\n      hosts:{'' if members else ' {}'}\n"
            for host in members:
                text += (f"        {host.name}:\n          ansible_host: {host.address}\n"
                         f"          ansible_port: {self.port}\n")
        text += ("  vars:\n"
                 f"    ansible_user: {user}\n"
                 f"    ansible_ssh_private_key_file: {json.dumps(str(self.key_path))}\n"
                 f"    ansible_ssh_common_args: {json.dumps(common_args)}\n"
                 "    ansible_python_interpreter: /usr/bin/python3\n")
        if user != "root":
            text += "    ansible_become: true\n"
        return text

    # --- internals: boot and teardown -----------------------------------------------------

    def _boot(self, hosts: list[Host]) -> None:
        """Start every host's nspawn, then wait for all of them together (boots overlap)."""
        for host in hosts:
            self._start_nspawn(host)
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            for future in [pool.submit(self._wait_ready, host) for host in hosts]:
                future.result()

    def _start_nspawn(self, host: Host) -> None:
        host_dir = self._host_dir(host.name)
        args = ["systemd-nspawn", "--quiet", "-D", str(host_dir / "root"), "--register=no", "--keep-unit",
                "--link-journal=no", "-b", "-M", f"{self.name}-{host.name}", f"--hostname={host.name}"]
        cgroup = self._cgroup(host.name)
        cgroup.create()
        with open(host_dir / "nspawn.log", "ab") as out:
            # preexec_fn runs between fork and exec: nspawn starts inside the host's own cgroup.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=cgroup.enter)
        _SPAWNED[proc.pid] = proc
        _write_atomic(host_dir / "nspawn.pid", f"{proc.pid}\n")  # a killed run never leaves it empty
        log.debug("%s: nspawn pid %d", host.name, proc.pid)

    def _wait_ready(self, host: Host) -> None:
        """Ready = sshd answers, systemd finished booting (degraded accepted: a unit we do not need
        may lose a race in a container) and ssh.service is active."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        log_file = self._host_dir(host.name) / "nspawn.log"
        while not ssh_banner(host.address, self.port):
            if not self.is_running(host.name):
                raise FleetError(f"{host.name}'s nspawn exited during boot; see {log_file}")
            if time.monotonic() > deadline:
                raise FleetError(f"{host.name}: no sshd on {host.address}:{self.port} after {BOOT_TIMEOUT:.0f} s;"
                                 f" see {log_file}")
            time.sleep(0.1)
        proc = self.ssh(host.name, "systemctl is-system-running --wait; systemctl is-active ssh.service",
                        timeout=BOOT_TIMEOUT)
        system_state, _, ssh_state = proc.stdout.strip().partition("\n")
        if system_state not in ("running", "degraded") or ssh_state.strip() != "active":
            raise FleetError(f"{host.name} did not boot cleanly: system {system_state!r}, ssh {ssh_state!r},"
                             f" {proc.stderr.strip()}; see {log_file}")
        if system_state == "degraded":
            failed = self.ssh(host.name, "systemctl --failed --no-legend --plain").stdout.strip()
            log.warning("%s is degraded (failed units: %s)", host.name, failed or "none now")
        log.info("%s up on %s:%d", host.name, host.address, self.port)

    def _clear(self, graceful: bool = True) -> None:
        """Stop every host this fleet's state dir records and remove the state dir. Used by down()
        and by up() to clean what a crashed earlier run left: only pids whose cmdline shows a
        systemd-nspawn for a root under this state dir are signalled."""
        hosts_dir = self.state_dir / "hosts"
        if hosts_dir.is_dir():
            for host_dir in sorted(hosts_dir.iterdir()):
                self._remove_host(host_dir.name, graceful)
        unmount_under(self.state_dir)
        remove_tree(self.state_dir)
        self.hosts = {}

    def _remove_host(self, name: str, graceful: bool = True) -> None:
        """Stop a host (a clean poweroff, or at once when graceful is False), unmount and delete it."""
        host_dir = self._host_dir(name)
        pid = self._nspawn_pid(host_dir)
        cgroup = self._cgroup(name)
        if pid is not None:
            log.info("stopping %s (nspawn pid %d)", name, pid)
            if graceful:
                cgroup.freeze(False)  # a frozen host cannot shut down
            else:
                cgroup.kill()
            _stop_nspawn(pid, cgroup)
        leftovers = cgroup.procs()
        if leftovers:  # e.g. a container whose nspawn was SIGKILLed by a crash of the harness
            log.warning("killing %d leftover processes of %s", len(leftovers), name)
            cgroup.kill()
            if not wait_gone(leftovers, 10):
                raise FleetError(f"processes {leftovers} of {name} survived SIGKILL")
            for pid in leftovers:
                _reap(pid)
        cgroup.remove()
        unmount_under(host_dir)
        if mounts_under(host_dir):
            raise FleetError(f"cannot unmount {host_dir}; see `findmnt -R {host_dir}`")
        remove_tree(host_dir)
        _remove_propagate_dir(f"{self.name}-{name}")
        self.hosts.pop(name, None)


# --- module helpers ---------------------------------------------------------------------


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise FleetError(f"missing tools: {', '.join(missing)}; install them with: {apt_command(missing.values())}")


def _is_our_nspawn(pid: int, root: Path) -> bool:
    args = cmdline(pid)
    return (pid_alive(pid) and bool(args) and os.path.basename(args[0]) == "systemd-nspawn"
            and str(root) in args)


def _stop_nspawn(pid: int, cgroup: HostCgroup) -> None:
    """SIGTERM makes nspawn power the container off cleanly; kill the host's cgroup if that takes too long.
    SIGTERM is repeated each second: nspawn forwards it as SIGRTMIN+3, which a container's systemd
    that is still starting up has no handler for yet, so a single one can be lost."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        signal_pid(pid, signal.SIGTERM)
        if wait_gone([pid], 1.0):
            break
    else:
        log.warning("nspawn %d did not stop in %.0f s; killing its host", pid, STOP_TIMEOUT)
        cgroup.kill()
        if not wait_gone([pid], 10):
            raise FleetError(f"nspawn {pid} survived SIGKILL")
    _reap(pid)


def _reap(pid: int) -> None:
    """Forget a stopped nspawn we started; wait_gone reaped it already, poll() only tells Popen so."""
    spawned = _SPAWNED.pop(pid, None)
    if spawned is not None:
        spawned.poll()


def _remove_propagate_dir(machine: str) -> None:
    """nspawn leaves /run/systemd/nspawn/propagate/<machine> behind when it is killed."""
    with suppress(OSError):
        (Path("/run/systemd/nspawn/propagate") / machine).rmdir()


def _user_in_root(root: Path, user: str) -> tuple[int, int, str] | None:
    """uid, gid and home of a user in the host's /etc/passwd (not the controller's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    return None


def _install_authorized_key(root: Path, user: str, public_key: str) -> None:
    entry = _user_in_root(root, user)
    assert entry is not None, user
    uid, gid, home = entry
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key)
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, uid, gid)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


def list_fleets(root: Path | None = None) -> list[Fleet]:
    """Every fleet with a state directory under the state root."""
    base = root or state_root()
    return [Fleet(path.parent.name, root=base) for path in sorted(base.glob("*/fleet.json"))]


__all__ = ["Fleet", "FleetError", "Host", "list_fleets"]
