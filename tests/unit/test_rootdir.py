"""The release root's ownership: root owns R, releases/ and pool/, the agent's user live/ and shared/; a root-run
step refuses a path that user could have swapped, and an earlier layout moves in place (docs/releases.md).

These tests change owners (chown), so they run as root, as `make test` does."""

from __future__ import annotations

import argparse
import io
import json
import os
import pwd
import stat
from pathlib import Path

import pytest

from sync_agent.errors import UnsafePath
from sync_agent.host import commands
from sync_agent.host.releases import prune, switch
from sync_agent.host.rootdir import lay_out
from sync_agent.host.shared_data import SharedFiles
from sync_agent.host.staging import receive_stream
from sync_agent.layout import current_release, previous_release
from sync_agent.manifest import build_manifest
from sync_agent.stream import write_stream
from tests.builds import make_build
from tests.unit.test_releases import IMMUTABLE, stage_version

pytestmark = pytest.mark.unit

AGENT = "nobody"  # an unprivileged user every Debian has, standing in for sync-agent


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests chown files to another user: run them as root (make test does)")


def owner(path: Path) -> str:
    return pwd.getpwuid(os.lstat(path).st_uid).pw_name


def earlier_layout(tmp_path: Path) -> tuple[Path, str, str]:
    """A root as frontfleet laid it out before: the agent owned R, current/previous sat in R as releases/<id>."""
    root = tmp_path / "srv"
    first = stage_version(root, tmp_path, "v1")
    second = stage_version(root, tmp_path, "v2")
    (root / "current").symlink_to(f"releases/{second}")
    (root / "previous").symlink_to(f"releases/{first}")
    (root / "shared").mkdir()
    agent = pwd.getpwnam(AGENT)
    for path in (root, root / "shared", root / "current", root / "previous"):
        os.chown(path, agent.pw_uid, agent.pw_gid, follow_symlinks=False)
    return root, first, second


def test_a_new_root_is_roots_with_live_and_shared_the_agents_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    plan = lay_out(root, AGENT)
    assert f"create {root}" in plan.changes
    assert {owner(root / name) for name in ("", "releases", "pool")} == {"root"}
    assert {owner(root / name) for name in ("live", "shared", "private")} == {AGENT}
    assert os.readlink(root / "current") == "live/current"
    assert {stat.S_IMODE(os.lstat(root / name).st_mode) for name in ("", "releases", "live")} == {0o755}
    assert stat.S_IMODE(os.lstat(root / "private").st_mode) == 0o750  # nginx's user cannot enter it
    assert lay_out(root, AGENT).changes == []


def test_a_private_folder_opened_up_is_closed_again_and_a_dry_run_says_so_first(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    lay_out(root, AGENT)
    os.chmod(root / "private", 0o755)
    dry = lay_out(root, AGENT, dry_run=True)
    assert dry.changes == [f"chmod {root / 'private'} 0755 -> 0750"]
    assert stat.S_IMODE(os.lstat(root / "private").st_mode) == 0o755, "a dry run changes nothing"
    assert lay_out(root, AGENT).changes == dry.changes
    assert stat.S_IMODE(os.lstat(root / "private").st_mode) == 0o750
    assert f"create {tmp_path / 'new' / 'private'}" in lay_out(tmp_path / "new", AGENT, dry_run=True).changes


def test_an_earlier_layout_moves_in_place_and_serves_the_same_release_through_both_paths(tmp_path: Path) -> None:
    root, first, second = earlier_layout(tmp_path)
    foreign = root / "releases" / f"{second}" / "planted.txt"
    foreign.write_text("the agent's")
    os.chown(foreign, pwd.getpwnam(AGENT).pw_uid, 0)

    predicted = lay_out(root, AGENT, dry_run=True)
    assert owner(root) == AGENT and os.readlink(root / "current") == f"releases/{second}", "a dry run changed it"
    done = lay_out(root, AGENT)
    assert done.changes == predicted.changes
    assert any(change.startswith(f"chown {root} ") for change in done.changes)

    assert (current_release(root), previous_release(root)) == (second, first)
    assert os.readlink(root / "live" / "current") == f"../releases/{second}"
    assert os.readlink(root / "current") == "live/current"  # what an nginx config from before still serves
    assert (root / "current" / "index.html").read_bytes() == (root / "live" / "current" / "index.html").read_bytes()
    assert owner(root) == "root" and owner(foreign) == "root" and owner(root / "live" / "current") == AGENT
    assert lay_out(root, AGENT).changes == []
    third = stage_version(root, tmp_path, "v3")
    switch(root, third)
    assert (current_release(root), previous_release(root)) == (third, second)
    assert (root / "current" / "index.html").read_bytes() == b"<html>v3</html>"


@pytest.mark.parametrize("name", ["pool", "releases", "live", "shared"])
def test_a_planted_symlink_is_refused_by_name_and_its_target_survives(tmp_path: Path, name: str) -> None:
    root, _, _ = earlier_layout(tmp_path)
    canary = tmp_path / "canary"
    make_build(canary, {"secret": b"root's"})
    if (root / name).exists():  # an earlier layout has no live/ yet: a symlink planted there is refused too
        os.rename(root / name, root / f"{name}.away")
    (root / name).symlink_to(canary)
    with pytest.raises(UnsafePath, match=rf"{root / name} is a symlink to '{canary}'"):
        lay_out(root, AGENT)
    assert (canary / "secret").read_bytes() == b"root's" and owner(canary / "secret") == "root"


def test_staging_as_root_refuses_a_releases_folder_another_user_owns(tmp_path: Path) -> None:
    root, _, _ = earlier_layout(tmp_path)
    os.chown(root / "releases", pwd.getpwnam(AGENT).pw_uid, 0)
    build = make_build(tmp_path / "b3", {"index.html": b"v3"})
    manifest = build_manifest(build)
    stream = io.BytesIO()
    write_stream(stream, manifest, build, [entry.sha256 for entry in manifest.entries])
    stream.seek(0)
    with pytest.raises(UnsafePath, match=rf"{root} is owned by uid"):  # R itself is the agent's, before migration
        receive_stream(root, manifest.release_id, stream, IMMUTABLE)
    lay_out(root, AGENT)
    stream.seek(0)
    assert receive_stream(root, manifest.release_id, stream, IMMUTABLE).files_written == 1


def test_prune_refuses_a_pool_swapped_for_a_symlink_and_removes_nothing(tmp_path: Path) -> None:
    root, first, second = earlier_layout(tmp_path)
    lay_out(root, AGENT)
    canary = make_build(tmp_path / "canary", {"assets/app-v0.js": b"root's"})
    os.rename(root / "pool", root / "pool.away")  # as root: the agent's user can no longer do this (test_rootdir)
    (root / "pool").symlink_to(canary)
    with pytest.raises(UnsafePath, match=rf"{root / 'pool'} is a symlink"):
        prune(root, keep=0)
    assert (canary / "assets" / "app-v0.js").read_bytes() == b"root's"
    assert sorted(p.name for p in (root / "releases").iterdir() if p.is_dir()) == sorted([first, second])


def test_prune_refuses_when_the_agents_current_link_points_outside_the_releases(tmp_path: Path) -> None:
    root, first, second = earlier_layout(tmp_path)
    lay_out(root, AGENT)
    (root / "live" / "current").unlink()
    (root / "live" / "current").symlink_to("/root")
    with pytest.raises(UnsafePath, match=r"live/current is '/root', not a link to \.\./releases/<id>"):
        prune(root, keep=0)
    assert sorted(p.name for p in (root / "releases").iterdir() if p.is_dir()) == sorted([first, second])


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_status_as_root_reads_no_file_the_agent_pointed_elsewhere(tmp_path: Path, plant: str) -> None:
    root, _, second = earlier_layout(tmp_path)
    lay_out(root, AGENT)
    secret = tmp_path / "shadow"
    secret.write_text('{"root": "secret"}')
    for name in ("data.json", "applied.json"):
        if plant == "symlink":
            (root / "shared" / name).symlink_to(secret)
        else:
            os.mkfifo(root / "shared" / name)  # a reader that followed it would block forever
    if plant == "symlink":
        (root / "private" / "data.json").symlink_to(secret)
    else:
        os.mkfifo(root / "private" / "data.json")
    report = commands.status(argparse.Namespace(root=str(root), data=True))
    assert report.data is not None and report.data["current"] == second
    assert "secret" not in str(report.data)
    assert str(root / "private" / "data.json") in report.data["private"]["error"]
    assert str(root / "shared" / "data.json") in report.data["data"]["error"]
    assert str(root / "shared" / "applied.json") in report.data["applied"]["error"]


def test_the_agent_replaces_a_symlink_planted_at_its_data_file_instead_of_following_it(tmp_path: Path) -> None:
    """data.json made a symlink that cannot be followed (on a host: into /root, which the agent's user may not
    enter; here a name too long to resolve, which fails for root too). The next write replaces the link with the
    data; before, every write failed and the host stayed degraded."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.json").symlink_to("/" + "x" * 300 + "/secret")
    SharedFiles(shared, None, "web1").write_data({"banner": 1})
    assert not (shared / "data.json").is_symlink()
    assert json.loads((shared / "data.json").read_bytes()) == {"banner": 1}
