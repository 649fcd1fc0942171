"""Control that acts exactly once and only under the lock it holds, on the session's fleet: a rollback whose
reply is lost, a rollout whose lock is broken under it, a rollout killed after its canary, a prune whose lock
was lost. Each ends with the fleet serving what the user expects, and `fab log` naming who did what."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.deployment import BIN, REPO, Deployment, wait_until
from tests.fleet.fab_builds import assert_fleet_serves, fab_json, redis_cli, release_id, rollout, salted_build
from tests.fleet.helpers import wait_healthy
from tests.servers import LossyProxy, is_script_call

pytestmark = pytest.mark.fleet


def build(tmp_path: Path, name: str) -> Path:
    return salted_build(tmp_path / name, f"interrupted-{name}", chunks=3, pages=1)


def fab_in_background(deployed: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "fab"), *args], cwd=REPO, env=deployed.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def change_log(deployed: Deployment, limit: int = 30) -> list[dict[str, Any]]:
    return list(fab_json(deployed, "log", "--limit", str(limit)))


def test_a_rollback_whose_reply_is_lost_moves_the_fleet_exactly_one_step(deployed: Deployment,
                                                                         tmp_path: Path) -> None:
    one, two, three = (build(tmp_path, name) for name in ("one", "two", "three"))
    for each in (one, two, three):
        rollout(deployed, each)
    redis = next(h for h in deployed.fleet.hosts.values() if h.role == "redis")
    with LossyProxy(redis.address, 6379) as proxy:
        lossy = deployed.like(tmp_path / "lossy", frontfleet_redis_direct=True, frontfleet_redis_address="127.0.0.1",
                              frontfleet_redis_port=proxy.port)
        proxy.lose_reply(is_script_call(b"rollback"))
        result = fab_json(lossy, "rollback")
        assert proxy.lost, "the proxy lost no reply: the test proved nothing"
    assert result["release"] == release_id(deployed, two)
    assert_fleet_serves(deployed, two)
    history = fab_json(deployed, "releases")
    assert [r["release"] for r in history if r["current"]] == [release_id(deployed, two)]
    assert history[-1]["release"] == release_id(deployed, three), "history lost a release"
    newest = change_log(deployed, 3)
    assert [e["what"] for e in newest[:2]] == ["rollback", "activate"], "one rollback, not two"
    assert newest[0]["rev"] == result["revision"] and newest[0]["who"]


def test_a_rollout_whose_lock_is_broken_publishes_nothing_more_and_the_new_holders_release_stands(
        deployed: Deployment, tmp_path: Path, agent_control: Any) -> None:
    a, x, y = (build(tmp_path, name) for name in ("a", "x", "y"))
    rollout(deployed, a)
    x_id, y_id = release_id(deployed, x), release_id(deployed, y)
    agent_control("web1")  # the canary host: the old rollout waits for it, holding the lock
    old = fab_in_background(deployed, "rollout", "--build", str(x), "--canary", "1", "--timeout", "120")
    try:
        wait_until(lambda: redis_cli(deployed, "HGET", "fleettest:desired", "host:web1").strip() == x_id,
                   timeout=60, what="the old rollout's canary step")
        os.kill(old.pid, signal.SIGSTOP)  # a holder that stalls (a laptop lid closed) and wakes later
        deployed.ssh("web1", "systemctl start sync-agent")
        broke = deployed.fab("lock", "--force")
        assert broke.returncode == 0 and f"broke the deploy lock held by rollout of {x_id}" in broke.stderr
        refused = deployed.fab("rollout", "--build", str(y), "--timeout", "20")
        assert refused.returncode == 4
        assert f"unfinished rollout of {x_id} (phase canary" in refused.stderr and "--abort" in refused.stderr
        aborted = deployed.fab("rollout", "--abort", "--timeout", "20")
        assert aborted.returncode == 0 and f"aborted the rollout of {x_id}" in aborted.stdout
        assert_fleet_serves(deployed, a)
        rollout(deployed, y)  # the new holder
    finally:
        os.kill(old.pid, signal.SIGCONT)
        out, err = old.communicate(timeout=120)
        print(out, err)
    assert old.returncode == 4
    assert "lost the deploy lock" in err and "changed nothing more" in err
    assert_fleet_serves(deployed, y)
    assert redis_cli(deployed, "HGETALL", "fleettest:desired").split() == ["fleet", y_id]
    assert fab_json(deployed, "releases")[-1]["release"] == y_id
    for host in deployed.web_hosts:
        assert y_id in deployed.ssh(host, "ls /srv/fleettest/releases/").split(), f"{host} lost the new release"
    whats = [(e["what"], e.get("release") or e.get("holder", "")) for e in change_log(deployed)]  # newest first
    broken = next(i for i, (what, holder) in enumerate(whats) if what == "lock broken" and x_id in holder)
    assert whats.index(("activate", y_id)) < whats.index(("restore", release_id(deployed, a))) < broken, whats


def test_a_rollout_killed_after_its_canary_is_named_by_status_and_undone_by_abort(
        deployed: Deployment, tmp_path: Path, agent_control: Any) -> None:
    a, x = build(tmp_path, "killed-a"), build(tmp_path, "killed-x")
    rollout(deployed, a)
    x_id = release_id(deployed, x)
    agent_control("web2")  # the fleet-wide step cannot finish: the rollout is still running when it is killed
    killed = fab_in_background(deployed, "rollout", "--build", str(x), "--canary", "1", "--timeout", "60")
    try:
        wait_until(lambda: deployed.status_of("web1")["release"] == x_id, timeout=60,
                   what="the canary web1 to acknowledge x")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
    deployed.ssh("web2", "systemctl start sync-agent")
    status = wait_until(lambda: (r := deployed.fab("status")).returncode == 5 and "unfinished" in r.stdout and r,
                        timeout=30, interval=1, what="`fab status` to name the unfinished rollout")
    assert f"unfinished rollout of {x_id}" in status.stdout and "`fab rollout --abort`" in status.stderr
    shown = json.loads(deployed.fab("status", "--json").stdout)
    assert shown["rollout"]["release"] == x_id and shown["rollout"]["back_to"]["fleet"] == release_id(deployed, a)

    held = deployed.fab("rollout", "--abort")
    assert held.returncode == 4 and f"held by rollout of {x_id}" in held.stderr  # the dead holder's lock
    assert deployed.fab("lock", "--force").returncode == 0
    aborted = fab_json(deployed, "rollout", "--abort")
    assert aborted["changed"] and aborted["aborted"]["release"] == x_id
    assert_fleet_serves(deployed, a)
    wait_healthy(deployed, timeout=30)
    assert json.loads(deployed.fab("status", "--json").stdout)["rollout"] is None
    newest = change_log(deployed, 3)
    assert newest[0]["what"] == "restore" and newest[0]["during"].startswith("abort of an unfinished rollout by ")
    assert newest[1]["what"] == "lock broken" and x_id in newest[1]["holder"]
    assert all(e["who"] and e["when"] for e in newest)


def test_a_prune_whose_lock_was_lost_removes_nothing_and_a_young_staging_is_kept(
        deployed: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sync_agent import control
    from sync_agent.errors import LockLost

    rollout(deployed, build(tmp_path, "prune"))
    releases = "/srv/fleettest/releases"
    deployed.ssh("web1", f"mkdir -p {releases}/00000000000000aa.partial {releases}/00000000000000bb.partial && "
                         f"touch -d '10 minutes ago' {releases}/00000000000000aa.partial")
    for name, value in deployed.env().items():
        monkeypatch.setenv(name, value)
    with control.session(str(deployed.inventory)) as s, s.lock.held("prune by a stalled operator") as hold:
        assert deployed.fab("lock", "--force").returncode == 0
        with pytest.raises(LockLost, match="expired or was broken"):
            control.prune(s, hold=hold)
    left = deployed.ssh("web1", f"ls {releases}").split()
    assert {"00000000000000aa.partial", "00000000000000bb.partial"} <= set(left), "a prune without the lock removed"
    pruned = fab_json(deployed, "prune")
    assert pruned["web1"] is not None
    left = deployed.ssh("web1", f"ls {releases}").split()
    assert "00000000000000aa.partial" not in left, "a staging left ten minutes ago is garbage"
    assert "00000000000000bb.partial" in left, "a staging younger than the lock's TTL may be running"
    deployed.ssh("web1", f"rmdir {releases}/00000000000000bb.partial")
