"""Reaching hosts and Redis from the controller: the system's OpenSSH with a generated ssh_config.

The client and options are the ones Ansible uses (HostName, Port, User,
IdentityFile and every ssh argument of the inventory, as sshargs.py turns
them into ssh_config lines), with ControlMaster multiplexing, so a fleet that
Ansible reaches, frontfleet reaches. Redis is reached through a unix socket
forwarded to the redis host by an SSH master kept for the next command,
unless frontfleet_redis_direct is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

from ..errors import (
    FrontfleetError,
    HostError,
    HostUnreachable,
    RemoteCommandFailed,
    StoreUnavailable,
    UsageError,
)
from ..fsutil import private_dir, user_cache_dir
from .inventory import Fleet, Host

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
TUNNEL_PERSIST = 300  # seconds an unused tunnel to Redis stays up for the next command
MAX_SOCKET_PATH = 103  # sun_path holds 104 bytes on the BSDs, 108 on Linux, the terminating NUL included


def ssh_config_text(hosts: list[Host], control_dir: Path) -> str:
    """An ssh_config with one Host block per inventory host."""
    blocks = []
    for host in hosts:
        lines = [f"Host {host.name}", *(f"  {line}" for line in host.ssh_args_config), f"  HostName {host.address}"]
        if host.port:
            lines.append(f"  Port {host.port}")
        if host.user:
            lines.append(f"  User {host.user}")
        if host.key_file:
            lines += [f"  IdentityFile {host.key_file}", "  IdentitiesOnly yes"]
        lines += [f"  {line}" for line in host.ssh_config]
        lines += [
            "  BatchMode yes",
            f"  ConnectTimeout {CONNECT_TIMEOUT}",
            "  ServerAliveInterval 5",
            "  ServerAliveCountMax 3",
            "  ControlMaster auto",
            f"  ControlPath {control_dir}/%C",
            "  ControlPersist 60",
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


class Remote:
    """Run commands on the fleet's hosts through OpenSSH; one instance per operation."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._dir = tempfile.TemporaryDirectory(prefix="frontfleet-ssh-")
        self.config = Path(self._dir.name) / "ssh_config"
        self.config.write_text(ssh_config_text([*fleet.web, fleet.redis], Path(self._dir.name)))
        self._used: set[str] = set()  # hosts whose shared connection this operation may have opened

    def close(self) -> None:
        """Stop this operation's ControlMaster processes and remove the generated files."""
        self.disconnect([h for h in (*self.fleet.web, self.fleet.redis) if h.name in self._used])
        self._dir.cleanup()

    def connect(self, host: Host) -> None:
        """Open the host's shared connection now (handshake and authentication), so later commands
        start at once; a failure is left for those commands to report."""
        self._used.add(host.name)
        with suppress(subprocess.TimeoutExpired):
            subprocess.run(["ssh", "-F", str(self.config), host.name, "true"], stdin=subprocess.DEVNULL,
                           capture_output=True, check=False, timeout=CONNECT_TIMEOUT + 5)

    def disconnect(self, hosts: list[Host]) -> None:
        """Stop the hosts' shared connections (the next command opens a new one)."""
        for host in hosts:
            subprocess.run(["ssh", "-F", str(self.config), "-O", "exit", host.name],
                           capture_output=True, check=False, timeout=10)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, host: Host, command: list[str]) -> list[str]:
        """The ssh command line that runs command on host, with become when the inventory asks for it."""
        if host.become and host.become_user != host.user:
            if host.become_method != "sudo":
                raise FrontfleetError(f"{host.name}: become method {host.become_method!r} is not supported; use sudo")
            command = ["sudo", "-n", "-u", host.become_user, "--", *command]
        self._used.add(host.name)
        return ["ssh", "-F", str(self.config), host.name, "--", shlex.join(command)]

    def run(self, host: Host, command: list[str], stdin: bytes | None = None, timeout: float = 120) -> str:
        """Run a command, return its stdout; a HostError names the host and the cause."""
        try:
            result = subprocess.run(self.argv(host, command), input=stdin, capture_output=True, timeout=timeout,
                                    check=False)
        except subprocess.TimeoutExpired as err:
            raise HostUnreachable(host.name, f"no answer within {timeout:.0f}s") from err
        if result.returncode != 0:
            raise _failure(host.name, result.returncode, result.stderr.decode(errors="replace"))
        return result.stdout.decode()

    def stream(self, host: Host, command: list[str], talk: Callable[[IO[bytes], IO[bytes]], object],
               timeout: float = 600) -> str:
        """Run a command, let talk(stdin, stdout) converse with it, return the rest of its stdout.

        Closing stdin after talk() ends the stream. A command still running after timeout is
        killed; a HostError names the host and the cause.
        """
        with tempfile.TemporaryFile() as errors, subprocess.Popen(
                self.argv(host, command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(timeout, expire)
            timer.start()
            try:
                with suppress(BrokenPipeError):  # the remote side gave up; its stderr says why
                    talk(proc.stdin, proc.stdout)
                with suppress(BrokenPipeError):
                    proc.stdin.close()
                rest = proc.stdout.read()
                proc.wait()
            finally:
                timer.cancel()
            if expired.is_set():
                raise HostUnreachable(host.name, f"no answer within {timeout:.0f}s")
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        if proc.returncode != 0:
            raise _failure(host.name, proc.returncode, stderr)
        return rest.decode()

    def relay(self, source: Host, source_command: list[str], source_input: bytes, target: Host,
              target_command: list[str], timeout: float = 600) -> str:
        """Pipe one host's command output into another's, through the controller; return the target's stdout."""
        with subprocess.Popen(self.argv(source, source_command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as producer:
            assert producer.stdin is not None and producer.stdout is not None
            producer.stdin.write(source_input)
            producer.stdin.close()
            source_out = producer.stdout
            output = self.stream(target, target_command, lambda pipe, _: shutil.copyfileobj(source_out, pipe), timeout)
            # Not communicate(): it flushes the stdin closed above (ValueError). stdout is drained: it is exiting.
            assert producer.stderr is not None
            stderr = producer.stderr.read()
            producer.wait(timeout=timeout)
        if producer.returncode != 0:
            raise _failure(source.name, producer.returncode, stderr.decode(errors="replace"))
        return output

    def redis_socket(self, host: Host, address: str, port: int) -> str:
        """A unix socket forwarded to address:port as seen from host (Redis behind its private address), through an
        SSH master that outlives this operation by TUNNEL_PERSIST seconds: the next `fab` call finds it open and
        spends no SSH handshake. The socket (0600, ssh's StreamLocalBindMask) and the master's control socket live
        in the user's own 0700 folder, named for everything that reaches the host, so a changed inventory gets a
        new tunnel."""
        folder = private_dir(user_cache_dir("ssh"))  # SSH masters that outlive one command
        block = ssh_config_text([host], folder) + f"{address}:{port}"
        name = hashlib.sha256(block.encode()).hexdigest()[:20]
        control, socket_path = folder / f"{name}.ctl", folder / f"{name}.sock"
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise UsageError(f"the tunnel's socket {socket_path} is longer than a unix socket path may be "
                             f"({MAX_SOCKET_PATH} bytes); set XDG_CACHE_HOME to a shorter folder")
        base = ["ssh", "-F", str(self.config), "-o", f"ControlPath={control}"]
        if socket_path.exists() and _ssh([*base, "-O", "check", host.name]).returncode == 0:
            return str(socket_path)
        _ssh([*base, "-O", "exit", host.name])  # a master without its socket (the folder was cleaned): replaced
        control.unlink(missing_ok=True)  # a dead master's socket: ssh would run without multiplexing, for ever
        master = [*base, "-f", "-N", "-o", "ControlMaster=yes", "-o", f"ControlPersist={TUNNEL_PERSIST}",
                  "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                  "-L", f"{socket_path}:{address}:{port}", host.name]
        # The master forks into the background once the forward is up: its output goes to a file, not to pipes
        # that would stay open as long as it lives.
        with tempfile.TemporaryFile() as errors:
            try:
                code = subprocess.run(master, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                      timeout=CONNECT_TIMEOUT + 10, check=False).returncode
            except subprocess.TimeoutExpired:
                code = 255
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        if code != 0 or not socket_path.exists():
            why = " ".join(stderr.strip().splitlines()[-3:]) or f"exit code {code}"
            raise StoreUnavailable(f"the SSH tunnel to Redis through {host.name} failed: {why}")
        return str(socket_path)


def _ssh(argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", f"no answer within {timeout:.0f}s")


def _failure(host: str, code: int, stderr: str) -> HostError:
    """ssh exits 255 when it could not reach the host; any other code is the remote command's own."""
    text = " ".join(stderr.strip().splitlines()[-3:]) or f"exit code {code}"
    if code == 255:
        return HostUnreachable(host, f"unreachable over SSH ({text})")
    return RemoteCommandFailed(host, text, code)
