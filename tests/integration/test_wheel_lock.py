"""The wheels shipped to hosts come from one lock: the same versions for every platform, each wheel checked
against the sha256 the lock records for it before it is shipped."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sync_agent.control.wheels import AGENT_WHEEL_PREFIX, build_wheels, load_lock
from sync_agent.errors import FrontfleetError, UsageError

pytestmark = pytest.mark.integration



def versions(files: dict[str, str]) -> dict[str, str]:
    """Package → version of the dependency wheels (not the agent's own)."""
    return {name.split("-")[0]: name.split("-")[1] for name in files if not name.startswith(AGENT_WHEEL_PREFIX)}


@pytest.fixture(scope="module")
def x86_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheels") / "cp311-x86_64"
    build_wheels(dest, "3.11.2", "x86_64")
    return dest


def test_an_x86_64_and_an_aarch64_host_get_the_same_versions_the_lock_pins(x86_64: Path, tmp_path: Path) -> None:
    arm = build_wheels(tmp_path / "cp311-aarch64", "3.11.2", "aarch64")
    intel = {p.name: "" for p in x86_64.glob("*.whl")}
    pinned = {name: entry["version"] for name, entry in load_lock()["packages"].items()}
    assert versions(intel) == versions(arm.files) == pinned
    assert any("aarch64" in name for name in arm.files) and any("x86_64" in name for name in intel)


def test_a_tampered_wheel_is_refused_by_its_hash_before_it_is_shipped(x86_64: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    shutil.copytree(x86_64, dest)
    hiredis = next(dest.glob("hiredis-*.whl"))
    hiredis.write_bytes(hiredis.read_bytes() + b"\0")
    with pytest.raises(FrontfleetError, match=rf"{hiredis.name} does not match the sha256 the wheel lock records"):
        build_wheels(dest, "3.11.2", "x86_64")


def test_a_wheel_no_lock_names_is_not_shipped(x86_64: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    shutil.copytree(x86_64, dest)
    stray = dest / "redis-1.0.0-py3-none-any.whl"
    stray.write_bytes(b"an older lock's wheel")
    result = build_wheels(dest, "3.11.2", "x86_64")
    assert stray.name not in result.files and not stray.exists()


def test_a_platform_the_lock_does_not_cover_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no wheels for hosts on Python 3\.10 / x86_64.*wheels-lock"):
        build_wheels(tmp_path / "old", "3.10.12", "x86_64")


def test_a_build_by_another_controller_never_changes_the_set_a_deploy_ships(x86_64: Path, tmp_path: Path) -> None:
    """Two controllers of one user share the cache folder: another version's build replaces the agent wheel there
    while this deploy's role still copies. The role copies from the set this build returned, which keeps its bytes."""
    dest = tmp_path / "shared-cache"
    shutil.copytree(x86_64, dest)
    ours = build_wheels(dest, "3.11.2", "x86_64")
    agent = next(name for name in ours.files if name.startswith(AGENT_WHEEL_PREFIX))
    for wheel in dest.glob(f"{AGENT_WHEEL_PREFIX}*.whl"):  # what another version's build leaves there
        wheel.unlink()
    (dest / f"{AGENT_WHEEL_PREFIX}0.0.1-py3-none-any.whl").write_bytes(b"another controller's agent")
    assert sorted(p.name for p in ours.directory.iterdir()) == sorted(ours.files)
    assert hashlib.sha256((ours.directory / agent).read_bytes()).hexdigest() == ours.files[agent]
    again = build_wheels(dest, "3.11.2", "x86_64")
    assert again.directory == ours.directory and again.files == ours.files, "the same build, the same set"
