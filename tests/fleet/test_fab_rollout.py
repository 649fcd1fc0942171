"""`fab rollout` and friends on real hosts: what a user sees over HTTP, in `fab` output and exit codes.

The happy paths: a build then the next one (a small delta), the same build again, rollbacks (fab and
frontfleet.fleet.rollback), assets across releases, release metadata, prune, shared data, the deploy lock,
and the progress display. Every test rolls out builds of its own (see fab_builds).
"""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sync_agent.stream import OFFER_MAGIC
from tests.fleet.deployment import BIN, REPO, Deployment, wait_until
from tests.fleet.fab_builds import (
    Builds,
    assert_fleet_serves,
    changed_bytes,
    fab_json,
    files_of,
    hashed_assets,
    make_git_build,
    redis_cli,
    release_id,
    releases_on_disk,
    rollout,
    salted_build,
    status_json,
)

pytestmark = pytest.mark.fleet

KIB = 1024


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds.create(tmp_path_factory.mktemp("builds"), "rollout")


@pytest.fixture(scope="module")
def a_then_b(deployed: Deployment, builds: Builds) -> tuple[dict[str, Any], dict[str, Any]]:
    """`fab rollout --json` of build A, then of build B (three files changed): both results."""
    return rollout(deployed, builds.a), rollout(deployed, builds.b)


def print_skew(capsys: pytest.CaptureFixture[str], what: str, result: dict[str, Any]) -> None:
    """The cutover skew (latest minus earliest switched_at_ns across hosts), for the benchmark issue."""
    with capsys.disabled():
        skew = result["skew_ns"]
        print(f"\n[cutover skew] {what}: {skew / 1e6:.2f} ms" if skew is not None else f"\n[cutover skew] {what}: -")


def test_rollout_of_a_then_b_makes_every_host_serve_b(deployed: Deployment, builds: Builds,
                                                     a_then_b: tuple[dict[str, Any], dict[str, Any]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    first, second = a_then_b
    assert first["changed"] and first["switched"]
    assert second["changed"] and second["switched"]
    assert second["previous"] == first["release"] == release_id(deployed, builds.a)
    assert second["release"] == release_id(deployed, builds.b)
    assert_fleet_serves(deployed, builds.b)
    code, rows = status_json(deployed)
    assert code == 0, rows
    assert {r["host"]: r["release"] for r in rows} == {h: second["release"] for h in deployed.web_hosts}
    assert second["skew_ns"] is not None and second["skew_ns"] >= 0
    print_skew(capsys, "rollout of B (3 hosts)", second)


def test_rollout_check_says_what_would_be_sent_and_changes_nothing(
        deployed: Deployment, builds: Builds, a_then_b: tuple[dict[str, Any], dict[str, Any]],
        tmp_path: Path) -> None:
    unseen = Builds.create(tmp_path, "check").a
    before = {host: releases_on_disk(deployed, host) for host in deployed.web_hosts}
    result = deployed.fab("rollout", "--build", str(unseen), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"would roll out {release_id(deployed, unseen)}")
    assert all(f"  {host}: would send " in result.stdout for host in deployed.web_hosts)
    assert {host: releases_on_disk(deployed, host) for host in deployed.web_hosts} == before
    assert_fleet_serves(deployed, builds.b)


def test_the_next_build_sends_only_its_changed_files(builds: Builds,
                                                    a_then_b: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = a_then_b
    changed = changed_bytes(builds.a, builds.b)
    limit = changed * 1.10 + 64 * KIB
    total_a = sum(len(data) for data in files_of(builds.a).values())
    for host, staged in second["staged"].items():
        assert staged["files_sent"] == 3, f"{host}: {staged}"
        assert staged["bytes_sent"] <= limit, (
            f"{host} was sent {staged['bytes_sent']} bytes for B: more than {changed} changed bytes + 10 % + 64 KiB")
    for host, staged in first["staged"].items():  # A was new: all of it went out (so the figures above mean something)
        assert staged["bytes_sent"] >= total_a, f"{host}: {staged}"


def test_after_the_switch_every_host_serves_a_hashed_assets_and_b_index(
        deployed: Deployment, builds: Builds, a_then_b: tuple[dict[str, Any], dict[str, Any]]) -> None:
    only_in_a = sorted(set(hashed_assets(builds.a)) - set(hashed_assets(builds.b)))
    assert only_in_a, "build B should drop a hashed asset of A"
    a_files = files_of(builds.a)
    for host in deployed.web_hosts:
        for path in hashed_assets(builds.a)[:20] + only_in_a:
            status, body, _ = deployed.get(host, path)
            assert (status, body) == (200, a_files[path]), f"{host} /{path}: {status}"
        status, body, _ = deployed.get(host, "index.html")
        assert (status, body) == (200, (builds.b / "index.html").read_bytes()), f"{host} /index.html"


def test_the_same_build_again_sends_nothing_and_switches_nothing(
        deployed: Deployment, builds: Builds, a_then_b: tuple[dict[str, Any], dict[str, Any]]) -> None:
    switched_at = {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts}
    history = fab_json(deployed, "releases")

    again = rollout(deployed, builds.b)
    assert not again["changed"] and not again["switched"], again
    for host, staged in again["staged"].items():
        # only the stream's opening line went out: the host answered "staged" before any manifest was sent
        assert staged["already_staged"] and staged["bytes_sent"] == len(OFFER_MAGIC), f"{host}: {staged}"
    text = deployed.fab("rollout", "--build", str(builds.b))
    assert text.returncode == 0
    assert "already live everywhere; nothing sent, nothing switched" in text.stdout

    assert {host: deployed.status_of(host)["switched_at_ns"] for host in deployed.web_hosts} == switched_at
    assert fab_json(deployed, "releases") == history
    assert_fleet_serves(deployed, builds.b)


def _index_inodes(deployed: Deployment, release: str) -> dict[str, str]:
    return {host: deployed.ssh(host, f"stat -c %i /srv/fleettest/releases/{release}/index.html").strip()
            for host in deployed.web_hosts}


def test_rollback_returns_every_host_to_a_without_transfer_and_again_one_step_further(
        deployed: Deployment, builds: Builds, tmp_path: Path) -> None:
    z = salted_build(tmp_path / "z", "rollback-z", chunks=3, pages=1)
    for build in (z, builds.a, builds.b):
        rollout(deployed, build)
    a_id, z_id = release_id(deployed, builds.a), release_id(deployed, z)
    inodes = _index_inodes(deployed, a_id)

    result = deployed.fab("rollback")
    assert result.returncode == 0
    assert f"every host is on {a_id}" in result.stdout
    assert_fleet_serves(deployed, builds.a)
    assert _index_inodes(deployed, a_id) == inodes, "a rollback must switch to the staged release, not send it again"
    assert [r["release"] for r in fab_json(deployed, "releases") if r["current"]] == [a_id]

    second = fab_json(deployed, "rollback")
    assert second["release"] == z_id
    assert_fleet_serves(deployed, z)

    back = fab_json(deployed, "rollback", "--to", release_id(deployed, builds.b))
    assert back["release"] == release_id(deployed, builds.b)
    assert_fleet_serves(deployed, builds.b)


def test_rollback_playbook_agrees_with_fab_rollback(deployed: Deployment, builds: Builds) -> None:
    a_id, b_id = release_id(deployed, builds.a), release_id(deployed, builds.b)
    rollout(deployed, builds.a)
    rollout(deployed, builds.b)

    by_fab = fab_json(deployed, "rollback")
    after_fab = fab_json(deployed, "releases")
    assert by_fab["release"] == a_id
    fab_json(deployed, "rollback", "--to", b_id)

    play = deployed.playbook(playbook="frontfleet.fleet.rollback")
    assert play.returncode == 0
    assert fab_json(deployed, "releases") == after_fab
    assert_fleet_serves(deployed, builds.a)
    code, rows = status_json(deployed)
    assert code == 0 and {r["release"] for r in rows} == {a_id}

    play = deployed.playbook("-e", f"release_rollback_to={b_id}", playbook="frontfleet.fleet.rollback")
    assert play.returncode == 0
    assert [r["release"] for r in fab_json(deployed, "releases") if r["current"]] == [b_id]
    assert_fleet_serves(deployed, builds.b)


def test_rollback_playbook_refuses_a_limit_and_a_release_that_is_not_staged(deployed: Deployment) -> None:
    before = fab_json(deployed, "releases")
    limited = deployed.playbook("--limit", "web1", playbook="frontfleet.fleet.rollback")
    assert limited.returncode != 0
    assert "a rollback moves the whole web group at once" in limited.stdout
    unknown = deployed.playbook("-e", "release_rollback_to=0123456789abcdef", playbook="frontfleet.fleet.rollback")
    assert unknown.returncode != 0
    assert ("0123456789abcdef is not staged on every web host: web1: not staged; web2: not staged; "
            "web3: not staged; nothing was switched") in unknown.stdout
    assert fab_json(deployed, "releases") == before


def test_publish_switches_to_a_release_staged_everywhere_and_refuses_one_that_is_not(deployed: Deployment,
                                                                                 builds: Builds) -> None:
    rollout(deployed, builds.a)
    rollout(deployed, builds.b)
    a_id, b_id = release_id(deployed, builds.a), release_id(deployed, builds.b)

    unknown = subprocess.run([str(BIN / "sync-agent"), "release", "publish", "0123456789abcdef", "--json"], cwd=REPO,
                             env=deployed.env(), capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1, unknown.stderr
    assert json.loads(unknown.stdout)["hosts"] == {host: "not staged" for host in deployed.web_hosts}
    assert "nothing was switched" in unknown.stderr
    assert_fleet_serves(deployed, builds.b)

    published = subprocess.run([str(BIN / "sync-agent"), "release", "publish", a_id, "--label", "back to a",
                                "--json"], cwd=REPO, env=deployed.env(), capture_output=True, text=True, timeout=120)
    assert published.returncode == 0, published.stderr
    report = json.loads(published.stdout)
    assert report["switched"] and report["release"] == a_id and report["previous"] == b_id
    assert_fleet_serves(deployed, builds.a)
    assert [r["label"] for r in fab_json(deployed, "releases") if r["current"]] == ["back to a"]

    again = fab_json(deployed, "publish", b_id)
    assert again["switched"] and again["release"] == b_id
    assert_fleet_serves(deployed, builds.b)


def test_releases_and_status_show_label_who_and_when(deployed: Deployment, tmp_path: Path) -> None:
    tagged = make_git_build(tmp_path / "tagged", "labels-git", "v9.8.7")
    labelled = salted_build(tmp_path / "labelled", "labels-text", chunks=2, pages=1)
    rollout(deployed, tagged)
    rollout(deployed, labelled, "--label", "hotfix 42")

    rows = {r["release"]: r for r in fab_json(deployed, "releases")}
    tagged_row, labelled_row = rows[release_id(deployed, tagged)], rows[release_id(deployed, labelled)]
    assert tagged_row["label"] == "v9.8.7"
    assert labelled_row["label"] == "hotfix 42" and labelled_row["current"]
    assert labelled_row["who"] == f"root@{socket.gethostname()}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", labelled_row["when"])

    text = deployed.fab("releases")
    assert text.returncode == 0
    current = [line for line in text.stdout.splitlines() if line.startswith("*")]
    assert len(current) == 1 and "hotfix 42" in current[0] and f"root@{socket.gethostname()}" in current[0]
    status = deployed.fab("status")
    assert status.returncode == 0
    for host in deployed.web_hosts:
        line = next(line for line in status.stdout.splitlines() if line.startswith(host))
        assert release_id(deployed, labelled) in line and "hotfix 42" in line and "ready" in line


def test_prune_keeps_n_releases_but_never_current_previous_or_rollback_target(deployed: Deployment,
                                                                           tmp_path: Path) -> None:
    old = salted_build(tmp_path / "old", "prune-old", chunks=3, pages=1)
    p1, p2, p3 = (salted_build(tmp_path / f"p{i}", f"prune-{i}", chunks=3, pages=1) for i in (1, 2, 3))
    for build in (old, p1, p2, p3):
        rollout(deployed, build)
    assert fab_json(deployed, "rollback")["release"] == release_id(deployed, p2)
    # now: current p2, previous (the release the hosts left) p3, next rollback target p1
    ids = {name: release_id(deployed, build) for name, build in (("old", old), ("p1", p1), ("p2", p2), ("p3", p3))}
    old_asset = hashed_assets(old)[0]
    assert deployed.get(deployed.web_hosts[0], old_asset)[0] == 200

    removed = fab_json(deployed, "prune", "--keep", "1")
    for host in deployed.web_hosts:
        assert ids["old"] in removed[host], f"{host}: {removed[host]}"
        assert not {ids["p1"], ids["p2"], ids["p3"]} & set(removed[host])
        on_disk = releases_on_disk(deployed, host)
        assert {ids["p1"], ids["p2"], ids["p3"]} <= set(on_disk)
        assert ids["old"] not in on_disk and f"{ids['old']}.manifest.json" not in on_disk
        assert deployed.get(host, old_asset)[0] == 404, "the asset pool keeps only what kept releases use"

    text = deployed.fab("prune", "--keep", "1")
    assert text.returncode == 0 and all(f"{host}: removed nothing" in text.stdout for host in deployed.web_hosts)
    assert fab_json(deployed, "rollback")["release"] == ids["p1"]
    assert_fleet_serves(deployed, p1)


def test_data_commands_reach_every_host_and_answer_in_json(deployed: Deployment) -> None:
    value = {"text": "maintenance at 22:00", "level": 2}
    set_result = fab_json(deployed, "data-set", "banner", json.dumps(value))
    assert set_result["revision"] > 0
    wait_until(lambda: all(deployed.env_js(h)["data"].get("banner") == value for h in deployed.web_hosts),
               timeout=10, what="every host to render the banner into env.js")
    assert fab_json(deployed, "data-get", "banner") == value
    text = deployed.fab("data-get", "banner")
    assert text.returncode == 0 and json.loads(text.stdout) == value
    assert fab_json(deployed, "data-list")["banner"] == value

    deleted = fab_json(deployed, "data-del", "banner")
    assert deleted["revision"] > set_result["revision"]
    wait_until(lambda: all("banner" not in deployed.env_js(h)["data"] for h in deployed.web_hosts),
               timeout=10, what="every host to drop the banner from env.js")
    assert fab_json(deployed, "data-del", "banner") == {"key": "banner", "deleted": False, "private": False}
    missing = deployed.fab("data-get", "banner")
    assert missing.returncode == 2 and "no data key 'banner'" in missing.stderr
    bad = deployed.fab("data-set", "banner", "{not json")
    assert bad.returncode == 2 and "banner" not in fab_json(deployed, "data-list")
    # What agents could not serve is refused by fab itself, each naming its limit (docs/protocol.md, "Limits").
    for hostile, said in (("[" * 990 + "]" * 990, "nested deeper than 32 levels"),
                          ("NaN", "NaN is not a finite number"), ("1e999", "not a finite number")):
        refused = deployed.fab("data-set", "banner", hostile)
        assert refused.returncode == 2 and said in refused.stderr and "Traceback" not in refused.stderr, said
    assert "banner" not in fab_json(deployed, "data-list")


def test_data_export_and_import_round_trip_through_fab(deployed: Deployment, tmp_path: Path) -> None:
    value = {"text": "export me", "n": 1}
    fab_json(deployed, "data-set", "exported", json.dumps(value))
    backup = tmp_path / "backup.json"
    exported = fab_json(deployed, "data-export", "--file", str(backup))
    assert exported["file"] == str(backup) and json.loads(backup.read_text())["data"]["exported"] == value
    fab_json(deployed, "data-del", "exported")
    imported = fab_json(deployed, "data-import", str(backup))
    assert "exported" in imported["set"]
    wait_until(lambda: all(deployed.env_js(h)["data"].get("exported") == value for h in deployed.web_hosts),
               timeout=10, what="every host to serve the imported key")
    assert fab_json(deployed, "data-del", "exported")["deleted"]


def test_lock_force_breaks_a_stale_lock_and_names_its_holder(deployed: Deployment, builds: Builds) -> None:
    rollout(deployed, builds.b)
    holder = "rollout of 0123456789abcdef by ci@gone-runner pid 4242"  # a rollout whose process died
    redis_cli(deployed, "HSET", "fleettest:lock", "token", "f00d", "holder", holder)
    redis_cli(deployed, "PEXPIRE", "fleettest:lock", "120000")
    try:
        shown = deployed.fab("lock")
        assert shown.returncode == 0 and f"held by {holder}" in shown.stdout
        assert fab_json(deployed, "lock")["holder"] == holder

        refused = deployed.fab("rollout", "--build", str(builds.a))
        assert refused.returncode == 4
        assert f"the deploy lock is held by {holder}" in refused.stderr
        assert_fleet_serves(deployed, builds.b)

        forced = deployed.fab("lock", "--force")
        assert forced.returncode == 0
        assert f"broke the deploy lock held by {holder}" in forced.stderr
        assert "the deploy lock is free" in forced.stdout
    finally:
        redis_cli(deployed, "DEL", "fleettest:lock")
    assert fab_json(deployed, "lock") == {"holder": None, "expires_in": -1}
    assert fab_json(deployed, "lock", "--force") == {"broken": None}
    rollout(deployed, builds.a)
    assert_fleet_serves(deployed, builds.a)


def _fab_on_a_terminal(deployed: Deployment, *args: str) -> tuple[int, str]:
    """Run fab with stdout and stderr on a pseudo-terminal, as a user at a shell does; (exit code, output)."""
    main, child = pty.openpty()
    env = {**deployed.env(), "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([str(BIN / "fab"), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=child,
                            stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    code = proc.wait(timeout=300)
    return code, b"".join(chunks).decode(errors="replace")


def test_rollout_shows_a_bar_per_host_on_a_terminal_and_plain_lines_otherwise(deployed: Deployment,
                                                                            tmp_path: Path) -> None:
    on_terminal = salted_build(tmp_path / "tty", "progress-tty", chunks=20, pages=5)
    code, raw = _fab_on_a_terminal(deployed, "rollout", "--build", str(on_terminal))
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # what the terminal shows, without its escapes
    assert code == 0, output
    content = sum(len(data) for data in files_of(on_terminal).values()) / 1000
    for host in deployed.web_hosts:
        assert re.search(rf"{host}\s+━+ {content:.1f}/{content:.1f} kB", output), f"no full bar for {host}:\n{output}"
    shown = [(float(done), float(total)) for done, total in re.findall(r"━ ([0-9.]+)/([0-9.]+) kB", output)]
    assert shown and all(done <= total for done, total in shown), f"a bar went past its total:\n{output}"
    assert "waiting for 3 acknowledgement(s)" in output

    piped = salted_build(tmp_path / "piped", "progress-pipe", chunks=20, pages=5)
    result = deployed.fab("rollout", "--build", str(piped))
    assert result.returncode == 0
    assert "━" not in result.stdout and "\x1b[" not in result.stdout
    assert result.stdout.splitlines()[0].startswith(f"rolled out {release_id(deployed, piped)}")
    assert all(f"  {host}: sent 27 file(s)" in result.stdout for host in deployed.web_hosts)
    assert result.stderr == ""
