"""Helpers for the provisioning and release-play tests: builds, the play's rollout report, the control CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.builds import make_build
from tests.fleet.deployment import BIN, REPO, Deployment, wait_until

EXAMPLE_BUILD = REPO / "examples" / "frontend"
RELEASE_REPORT_TASK = "TASK [frontfleet.fleet.release : Show what the release did]"


def example_build_with(target: Path, changes: dict[str, str]) -> Path:
    """A copy of examples/frontend with `changes` (relative path -> text appended, or a new file's text)."""
    shutil.copytree(EXAMPLE_BUILD, target)
    return make_build(target, {relative: ((target / relative).read_bytes() if (target / relative).exists() else b"")
                               + text.encode() for relative, text in changes.items()})


def release_report(output: str) -> dict[str, Any]:
    """The `sync-agent rollout --json` result that the release play's debug task prints (YAML callback)."""
    start = output.index(RELEASE_REPORT_TASK)
    section = output[start:].split("\n\n", 1)[0]  # the task line, then "ok: [web1] => \n    msg:\n        ..."
    _, _, body = section.partition("=>")
    loaded = yaml.safe_load(body)
    assert isinstance(loaded, dict) and "msg" in loaded, section
    return dict(loaded["msg"])


def control(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """`sync-agent ARGS` as an operator on the controller with the publisher's generated credentials, reaching
    Redis directly on the redis host's address."""
    redis_host = next(h for h in deployment.fleet.hosts.values() if h.role == "redis")
    env = {**deployment.env(), "FRONTFLEET_REDIS_URL": f"redis://publisher@{redis_host.address}:6379/0",
           "FRONTFLEET_REDIS_PASSWORD_FILE": str(deployment.inventory / "credentials" / "redis-publisher"),
           "FRONTFLEET_NAMESPACE": "fleettest"}
    result = subprocess.run([str(BIN / "sync-agent"), *args], env=env, capture_output=True, text=True, timeout=60)
    print(f"sync-agent {' '.join(args)} -> {result.returncode}", result.stdout[-3000:], result.stderr[-2000:])
    return result


def release_list(deployment: Deployment) -> list[dict[str, Any]]:
    """The release history, newest last, as `sync-agent release list --json` prints it."""
    result = control(deployment, "release", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def agent_pid(deployment: Deployment, host: str) -> int:
    """The sync agent's MainPID on host (0 when it is not running)."""
    return int(deployment.ssh(host, "systemctl show --property=MainPID --value sync-agent.service").strip())


def handler_hosts(output: str, handler: str) -> list[str]:
    """The hosts a handler reported `changed` on, once per time it ran: e.g. ["web1", "web2", "web3"]."""
    hosts: list[str] = []
    for section in output.split("RUNNING HANDLER [")[1:]:
        title, _, rest = section.partition("]")
        if title.strip() != handler:
            continue
        for line in rest.split("\n\n", 1)[0].splitlines():
            if line.startswith("changed: ["):
                hosts.append(line.split("[", 1)[1].split("]", 1)[0].split(" ")[0])
    return sorted(hosts)


def staged_releases(deployment: Deployment, host: str) -> list[str]:
    """The releases staged on host's disk (`sync-agent status` on the host)."""
    out = deployment.ssh(host, "/opt/sync-agent/bin/sync-agent status --root /srv/fleettest --json")
    return list(json.loads(out)["staged"])


def release_id(build: Path) -> str:
    """The release id of a build (from its content), as a rollout names it."""
    from sync_agent.manifest import build_manifest

    return build_manifest(build).release_id


def rollout(deployment: Deployment, build: Path) -> None:
    """Make build the fleet's release through the control plane (`sync-agent rollout`): a test's known start."""
    result = subprocess.run([str(BIN / "sync-agent"), "rollout", "--inventory", str(deployment.inventory),
                             "--build", str(build), "--json"], cwd=REPO, env=deployment.env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"rollout of {build} failed: {result.stdout}{result.stderr}"
    for host in deployment.web_hosts:
        assert deployment.serves_build(host, build) == [], f"{host} does not serve {build} after its rollout"


def playbook_with_hook(deployment: Deployment, args: list[str], marker: str,
                       hook: Callable[[], object]) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook deploy.yml ARGS`, calling hook() once as soon as a line starting with marker is printed
    (e.g. when the release play begins, after the agents play has started every agent)."""
    command = [str(BIN / "ansible-playbook"), "deploy.yml", "-i", str(deployment.inventory), *args]
    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO, env=deployment.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        fired = False
        for line in process.stdout:
            lines.append(line)
            if not fired and line.startswith(marker):
                fired = True
                hook()
        returncode = process.wait(timeout=900)
    output = "".join(lines)
    print(output[-8000:])
    assert fired, f"the run never printed {marker!r}"
    return subprocess.CompletedProcess(command, returncode, output, "")


class RedisClients:
    """Who holds TCP connections to the fleet's Redis while a block runs, sampled with `ss` on the controller
    (the hosts share its network namespace): each client is a fleet host's process (by its cgroup) or the
    controller's."""

    def __init__(self, deployment: Deployment) -> None:
        redis_host = next(h for h in deployment.fleet.hosts.values() if h.role == "redis")
        self.target = f"{redis_host.address}:6379"
        self.fleet_cgroup = f"/frontfleet/{deployment.fleet.name}/"
        self.seen: set[tuple[str, str]] = set()  # (host name or "controller", process name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RedisClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def controller(self) -> set[str]:
        return {name for where, name in self.seen if where == "controller"}

    def of_host(self, host: str) -> set[str]:
        return {name for where, name in self.seen if where == host}

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", self.target],
                                 capture_output=True, text=True, check=False).stdout
            for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', out):
                try:
                    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
                except OSError:
                    continue
                where = cgroup.split(self.fleet_cgroup, 1)[1].split("/", 1)[0] if self.fleet_cgroup in cgroup \
                    else "controller"
                self.seen.add((where, name))


# --- what the operator sees ---------------------------------------------------------------------------


def wait_fab_status(deployed: Deployment, code: int, timeout: float = 30) -> Any:
    """Until `fab status` exits code; that run's result."""
    return wait_until(lambda: (r := deployed.fab("status")).returncode == code and r, timeout=timeout, interval=0.5,
                      what=f"`fab status` to exit {code}")


def served_data(deployed: Deployment, host: str) -> dict[str, Any]:
    status, body, _ = deployed.get(host, "/_sync/data.json")
    return dict(json.loads(body)) if status == 200 else {}


def serves(deployed: Deployment, host: str, key: str, value: Any) -> bool:
    return bool(served_data(deployed, host).get(key) == value)


def wait_agent_ready(deployed: Deployment, host: str, not_pid: str = "", timeout: float = 30) -> dict[str, str]:
    """Until host's agent (another process than not_pid, if given) reports `ready`; its status."""
    def ready() -> dict[str, str] | None:
        status = deployed.status_of(host)
        return status if status.get("state") == "ready" and status.get("pid") != not_pid else None

    return dict(wait_until(ready, timeout=timeout, what=f"{host}'s agent to be ready"))


def wait_healthy(deployed: Deployment, timeout: float = 60) -> None:
    """Until `fab status` exits 0: every agent reports, none silent, lagging or degraded, no rollout unfinished."""
    wait_until(lambda: deployed.fab("status").returncode == 0, timeout=timeout, interval=1,
               what="every host to be healthy in `fab status`")
