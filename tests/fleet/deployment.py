"""A deployed fleet, as a user drives it: ansible-playbook, fab, sync-agent, curl — all real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Deployment:
    """One fleet plus an inventory folder for it (hosts.yml from the harness, group_vars like the demo's)."""

    fleet: Fleet
    inventory: Path  # the inventory folder; credentials/ is generated inside it by the roles
    # the folder the user's commands run in: a frontfleet checkout (its playbooks, fabfile and sync_agent), or a
    # team's own repository (`frontfleet init`) that uses the frontfleet installed in bin's virtualenv
    checkout: Path = REPO
    bin: Path = BIN  # the virtualenv's bin/ of ansible-playbook, fab and sync-agent

    @classmethod
    def create(cls, fleet: Fleet, inventory: Path, user: str = "root", checkout: Path = REPO, bin: Path = BIN,
               **settings: Any) -> Deployment:
        """Write hosts.yml and group_vars/all/vars.yml (each service on its host's own address)."""
        inventory.mkdir(parents=True, exist_ok=True)
        fleet.write_inventory(inventory / "hosts.yml", user=user)
        group_vars = inventory / "group_vars" / "all"
        group_vars.mkdir(parents=True, exist_ok=True)
        values = {"frontfleet_app": "fleettest", "frontfleet_http_address": "{{ ansible_host }}",
                  "frontfleet_http_port": 80, "sync_agent_heartbeat": 1, "sync_agent_probe": 1, **settings}
        (group_vars / "vars.yml").write_text(yaml.safe_dump(values, sort_keys=True))
        return cls(fleet, inventory, checkout, bin)

    def like(self, folder: Path, user: str = "root", **settings: Any) -> Deployment:
        """Another inventory of the same fleet (same app, same credentials), as another operator would write it."""
        other = Deployment.create(self.fleet, folder, user=user, checkout=self.checkout, bin=self.bin, **settings)
        shutil.copytree(self.inventory / "credentials", folder / "credentials")
        return other

    # --- the user's commands ----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The user's environment; another checkout (an older commit's worktree) goes first on PYTHONPATH, so
        its own sync_agent — control plane, wheel builder, ACL filter — runs instead of this one's editable
        install in the venv, as on a controller that still has that version installed."""
        env = {**os.environ, "ANSIBLE_INVENTORY": str(self.inventory), "PATH": f"{self.bin}:{os.environ['PATH']}",
               "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", "NO_COLOR": "1"}
        if self.checkout != REPO and (self.checkout / "sync_agent").is_dir():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.checkout), os.environ.get("PYTHONPATH")]))
        return env

    def playbook(self, *args: str, playbook: str = "deploy.yml",
                 timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`ansible-playbook <playbook> -i <inventory> ARGS` from the checkout's root; output printed for the log."""
        result = subprocess.run([str(self.bin / "ansible-playbook"), playbook, "-i", str(self.inventory), *args],
                                cwd=self.checkout, env=self.env(), capture_output=True, text=True, timeout=timeout)
        print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
        return result

    def fab(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`fab TASK ARGS` from the checkout's root with ANSIBLE_INVENTORY set to this fleet's inventory."""
        result = subprocess.run([str(self.bin / "fab"), *args], cwd=self.checkout, env=self.env(), capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
        return result

    def ssh(self, host: str, command: str, check: bool = True) -> str:
        result = self.fleet.ssh(host, command)
        if check and result.returncode != 0:
            raise AssertionError(f"{host}: `{command}` failed ({result.returncode}): {result.stderr}")
        return result.stdout

    # --- what a browser sees -------------------------------------------------------------------------

    @property
    def web_hosts(self) -> list[str]:
        return sorted(name for name, host in self.fleet.hosts.items() if host.role == "web")

    def address(self, host: str) -> str:
        return self.fleet.hosts[host].address

    def get(self, host: str, path: str) -> tuple[int, bytes, dict[str, str]]:
        """GET http://<host address>/<path>: (status, body, headers)."""
        url = f"http://{self.address(host)}/{path.lstrip('/')}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def serves_build(self, host: str, build: Path) -> list[str]:
        """The files of build that host does not serve byte for byte (empty: it serves the whole build)."""
        wrong = []
        for path in sorted(p for p in build.rglob("*") if p.is_file()):
            relative = path.relative_to(build).as_posix()
            status, body, _ = self.get(host, relative)
            if status != 200 or hashlib.sha256(body).digest() != hashlib.sha256(path.read_bytes()).digest():
                wrong.append(f"{relative} ({status})")
        return wrong

    def env_js(self, host: str) -> dict[str, Any]:
        """The runtime config the agent rendered on host (templates/env.js.j2)."""
        status, body, _ = self.get(host, "/_sync/env.js")
        assert status == 200, f"{host} /_sync/env.js answered {status}"
        text = body.decode()
        return dict(json.loads(text[text.index("{"): text.rindex("}") + 1]))

    def status_of(self, host: str) -> dict[str, str]:
        """What the agent reports (`NS:host:<host>`, JSON; its values as text), read on the Redis host with
        redis-cli as the publisher; for an agent from before that key, its status hash. RESP2 (`-2`): the redis
        role renames HELLO away."""
        password = (self.inventory / "credentials" / "redis-publisher").read_text().strip()
        redis_host = next(h for h in self.fleet.hosts.values() if h.role == "redis")
        cli = f"REDISCLI_AUTH={password} redis-cli -2 --no-auth-warning -h {redis_host.address} --user publisher"
        raw = self.ssh(redis_host.name, f"{cli} --raw GET fleettest:host:{host}").strip()
        if raw:
            return {name: str(value) for name, value in json.loads(raw).items()}
        flat = json.loads(self.ssh(redis_host.name, f"{cli} --json HGETALL fleettest:status:{host}"))
        return dict(zip(flat[::2], flat[1::2], strict=True))


def wait_until(condition: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = "") -> Any:
    """Poll until condition() is truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of ansible-playbook output: host → {ok, changed, failed, …} (summed over plays)."""
    totals: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, counts = line.partition(":")
            row = totals.setdefault(host.strip(), {})
            for item in counts.split():
                key, _, value = item.partition("=")
                row[key] = row.get(key, 0) + int(value)
    return totals
