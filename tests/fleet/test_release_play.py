"""Releases through Ansible: `ansible-playbook deploy.yml -e release_build=DIR` on the session's deployed fleet.

Every test that needs a known release first makes it current through the control plane (`rollout`, a few seconds,
a no-op when it already is), then drives the play and checks what each web host serves over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from fleet import Fleet
from tests.fleet.conftest import fleet_name
from tests.fleet.deployment import REPO, Deployment, recap, wait_until
from tests.fleet.helpers import (
    EXAMPLE_BUILD,
    RedisClients,
    control,
    example_build_with,
    playbook_with_hook,
    release_id,
    release_list,
    release_report,
    rollout,
    staged_releases,
)

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

#: `make demo` boots its own fleet (web1-3 + redis1) here: beside the session's fleet (127.0.1 by default) and a
#: developer's own demo (name demo, 127.0.1).
DEMO_SUBNET = os.environ.get("FRONTFLEET_TEST_DEMO_SUBNET", "127.0.3")
VENDOR_BYTES = 200_000  # an unchanged vendor bundle: what delta staging must not send again


def changed_counts(output: str) -> dict[str, int]:
    return {host: row["changed"] for host, row in recap(output).items()}


def new_build(tmp_path: Path, name: str) -> Path:
    """A build no host has seen: examples/frontend with a tagged index.html."""
    return example_build_with(tmp_path / name, {"index.html": f"<!-- {name} {uuid.uuid4().hex} -->\n"})


def assert_serves(deployment: Deployment, build: Path) -> None:
    release = release_id(build)
    for host in deployment.web_hosts:
        assert deployment.serves_build(host, build) == [], f"{host} does not serve {build} byte for byte"
        assert deployment.env_js(host)["release"] == release, host


def test_release_play_serves_every_file_on_every_host_and_reruns_unchanged(deployed: Deployment) -> None:
    """Every web host serves every file of examples/frontend with the right bytes, env.js shows the data and the
    release, and the same run again reports changed=0 everywhere."""
    greeting = {"text": f"hello {uuid.uuid4().hex[:8]}"}
    assert control(deployed, "data", "set", "greeting", json.dumps(greeting)).returncode == 0
    first = deployed.playbook("-e", "release_build=examples/frontend")
    assert first.returncode == 0
    assert release_report(first.stdout)["release"] == release_id(EXAMPLE_BUILD)
    assert_serves(deployed, EXAMPLE_BUILD)
    for host in deployed.web_hosts:
        env = deployed.env_js(host)
        assert env["data"]["greeting"] == greeting, host
        assert env["release"] == release_id(EXAMPLE_BUILD)

    again = deployed.playbook("-e", "release_build=examples/frontend")
    assert again.returncode == 0
    assert changed_counts(again.stdout) == dict.fromkeys(deployed.fleet.hosts, 0)
    assert release_report(again.stdout)["changed"] is False


def test_second_build_sends_only_what_hosts_lack_and_switches_every_host(deployed: Deployment,
                                                                         tmp_path: Path) -> None:
    """A build that differs in two files sends those two files to each host (not the vendor bundle), every host
    switches, and the release history lists both releases."""
    vendor = "".join(f"/* vendor line {i:06d} */\n" for i in range(VENDOR_BYTES // 26))
    first = example_build_with(tmp_path / "first", {"assets/vendor-5e1f0a2b.js": vendor})
    rollout(deployed, first)
    second = example_build_with(tmp_path / "second", {"assets/vendor-5e1f0a2b.js": vendor,
                                              "index.html": "<!-- second build -->\n",
                                              "assets/app-2b9c0d4e.js": "console.log('second build');\n"})
    total = sum(p.stat().st_size for p in second.rglob("*") if p.is_file())

    result = deployed.playbook("-e", f"release_build={second}")
    assert result.returncode == 0
    report = release_report(result.stdout)
    for host, staged in sorted(report["staged"].items()):
        print(f"{host}: {staged['files_sent']} file(s), {staged['bytes_sent']} bytes sent of a {total}-byte build")
    assert sorted(report["staged"]) == deployed.web_hosts
    assert all(staged["files_sent"] == 2 for staged in report["staged"].values()), report["staged"]
    assert all(staged["bytes_sent"] < total // 10 for staged in report["staged"].values()), report["staged"]
    assert report["switched"] is True
    assert_serves(deployed, second)
    history = [row["release"] for row in release_list(deployed)]
    assert history[-2:] == [release_id(first), release_id(second)]


def test_limit_to_part_of_the_web_group_is_refused_and_changes_nothing(deployed: Deployment, tmp_path: Path) -> None:
    """--limit web1 cannot move the fleet's release: the run fails with a message that says why, stages nothing
    and every host keeps serving the release it had."""
    rollout(deployed, EXAMPLE_BUILD)
    history = release_list(deployed)
    build = new_build(tmp_path, "limited")
    result = deployed.playbook("--limit", "web1", "-e", f"release_build={build}")
    assert result.returncode != 0
    assert "the release play moves the whole web group at once" in result.stdout
    assert "Run it without --limit" in result.stdout
    assert changed_counts(result.stdout) == {"web1": 0}
    assert_serves(deployed, EXAMPLE_BUILD)
    assert all(release_id(build) not in staged_releases(deployed, host) for host in deployed.web_hosts)
    assert release_list(deployed) == history


def test_check_mode_reports_what_it_would_do_and_changes_nothing(deployed: Deployment, tmp_path: Path) -> None:
    """--check says it would switch to the new release and what it would send, and nothing moves."""
    rollout(deployed, EXAMPLE_BUILD)
    history = release_list(deployed)
    build = new_build(tmp_path, "checked")
    result = deployed.playbook("--check", "-e", f"release_build={build}")
    assert result.returncode == 0
    report = release_report(result.stdout)
    print(f"--check: {report}")
    assert (report["check_mode"], report["changed"], report["release"]) == (True, True, release_id(build))
    assert all(staged["files_sent"] == 1 for staged in report["staged"].values()), report["staged"]  # index.html
    assert_serves(deployed, EXAMPLE_BUILD)
    assert all(release_id(build) not in staged_releases(deployed, host) for host in deployed.web_hosts)
    assert release_list(deployed) == history


def test_failure_after_some_hosts_switched_rolls_back_and_names_the_host(deployed: Deployment, tmp_path: Path) -> None:
    """web2's agent stops once the agents play is done: web1 and web3 switch, web2 never acknowledges, the run fails
    naming web2, and every host serves the old release again."""
    rollout(deployed, EXAMPLE_BUILD)
    old = release_id(EXAMPLE_BUILD)
    build = new_build(tmp_path, "failing")
    try:
        result = playbook_with_hook(deployed, ["-e", f"release_build={build}", "-e", "release_timeout=10"],
                                    "PLAY [Stage and activate the release",
                                    lambda: deployed.ssh("web2", "systemctl stop sync-agent"))
        assert result.returncode != 0
        text = " ".join(result.stdout.split())  # the YAML callback may fold the message over lines
        assert f"rollout of {release_id(build)} failed: web2:" in text
        assert f"rolled back to {old}" in text or f"every host that answers is back on {old}" in text
        assert_serves(deployed, EXAMPLE_BUILD)
        assert [row["release"] for row in release_list(deployed) if row["current"]] == [old]
    finally:
        deployed.ssh("web2", "systemctl start sync-agent")
    wait_until(lambda: deployed.status_of("web2").get("release") == old, timeout=20, what="web2's agent back on")
    assert_serves(deployed, EXAMPLE_BUILD)


def test_release_play_runs_as_a_non_root_user_with_become(deployed: Deployment, tmp_path: Path) -> None:
    """With ansible_user=deploy (passwordless sudo) and become, the play and its control plane stage and switch
    the release; the roles change nothing (same files, same owners)."""
    rollout(deployed, EXAMPLE_BUILD)
    hosts_file = deployed.inventory / "hosts.yml"
    build = new_build(tmp_path, "as-deploy")
    try:
        deployed.fleet.write_inventory(hosts_file, user="deploy")
        result = deployed.playbook("-e", f"release_build={build}")
        assert result.returncode == 0
        assert "ansible_user: deploy" in hosts_file.read_text()
        changed = changed_counts(result.stdout)
        assert changed == {**dict.fromkeys(deployed.fleet.hosts, 0), "web1": 1}, changed  # web1: the release task
        assert_serves(deployed, build)
    finally:
        deployed.fleet.write_inventory(hosts_file)


def test_release_play_reaches_redis_only_through_the_ssh_tunnel_by_default(deployed: Deployment,
                                                                           tmp_path: Path) -> None:
    """frontfleet_redis_direct: false (the default): the controller opens no connection to Redis; the redis
    host's sshd does, for the tunnel."""
    rollout(deployed, EXAMPLE_BUILD)
    build = new_build(tmp_path, "tunnelled")
    with RedisClients(deployed) as clients:
        result = deployed.playbook("-e", f"release_build={build}")
    print(f"Redis clients seen: {sorted(clients.seen)}")
    assert result.returncode == 0
    assert clients.controller == set()
    assert "sshd" in clients.of_host("redis1")
    assert_serves(deployed, build)


def test_release_play_reaches_redis_directly_with_frontfleet_redis_direct(deployed: Deployment,
                                                                          tmp_path: Path) -> None:
    """frontfleet_redis_direct: true in the inventory's group_vars: the controller connects to Redis itself."""
    rollout(deployed, EXAMPLE_BUILD)
    build = new_build(tmp_path, "direct")
    group_vars = deployed.inventory / "group_vars" / "all" / "vars.yml"
    original = group_vars.read_text()
    try:
        group_vars.write_text(yaml.safe_dump({**yaml.safe_load(original), "frontfleet_redis_direct": True}))
        with RedisClients(deployed) as clients:
            result = deployed.playbook("-e", f"release_build={build}")
        print(f"Redis clients seen: {sorted(clients.seen)}")
        assert result.returncode == 0
        assert clients.controller, "the controller never connected to Redis directly"
        assert "sshd" not in clients.of_host("redis1")
        assert_serves(deployed, build)
        assert changed_counts(result.stdout) == {**dict.fromkeys(deployed.fleet.hosts, 0), "web1": 1}
    finally:
        group_vars.write_text(original)


@pytest.mark.timeout(1800)
def test_make_demo_from_a_fresh_clone_prints_urls_that_serve_the_example_site(tmp_path: Path) -> None:
    """`make demo` in a fresh `git clone` boots a fleet, deploys examples/frontend and prints one URL per web
    host that serves it byte for byte; `make demo-down` removes the fleet."""
    clone = tmp_path / "frontfleet"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    makefile = (clone / "Makefile").read_text()
    # A test must not touch a developer's running demo fleet (name demo, 127.0.1.x) nor the session's fleet.
    assert "DEMO_NAME" in makefile and "DEMO_SUBNET" in makefile, (
        "make demo has no DEMO_NAME/DEMO_SUBNET variables, so this test cannot boot it beside a running demo or "
        "the session's fleet")
    name = fleet_name("test-demo", DEMO_SUBNET)
    variables = [f"DEMO_NAME={name}", f"DEMO_SUBNET={DEMO_SUBNET}"]
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "ANSIBLE_INVENTORY")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))
    try:
        demo = subprocess.run(["make", "demo", *variables], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=1500)
        print(demo.stdout[-6000:], demo.stderr[-3000:], sep="\n")
        assert demo.returncode == 0, "make demo failed; see the output above"
        urls = re.findall(r"http://[0-9.]+(?::[0-9]+)?/", demo.stdout)
        assert len(urls) == 3 and all(url.startswith(f"http://{DEMO_SUBNET}.") for url in urls), urls
        for url in urls:
            for path in sorted(p for p in EXAMPLE_BUILD.rglob("*") if p.is_file()):
                with urllib.request.urlopen(url + path.relative_to(EXAMPLE_BUILD).as_posix(), timeout=10) as page:
                    assert hashlib.sha256(page.read()).digest() == hashlib.sha256(path.read_bytes()).digest(), (url,
                                                                                                                 path)
    finally:
        down = subprocess.run(["make", "demo-down", *variables], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=300)
        print(down.stdout[-2000:], down.stderr[-2000:], sep="\n")
    assert down.returncode == 0
    assert not Fleet(name).hosts, f"make demo-down left fleet {name} behind"
