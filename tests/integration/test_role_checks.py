"""The roles' preflight checks, run by ansible-playbook itself: a setting the fleet cannot be safe with stops the
play before any host is touched, naming the setting and its value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAY = """- name: Check the shared settings only
  hosts: web
  gather_facts: false
  roles: [frontfleet.fleet.frontfleet]
"""
INVENTORY = """all:
  children:
    web: {hosts: {web1: {ansible_connection: local}}}
    redis: {hosts: {redis1: {ansible_connection: local}}}
"""


def test_the_play_refuses_a_namespace_with_a_colon_naming_it(tmp_path: Path) -> None:
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    run = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(tmp_path / "hosts.yml"),
           str(tmp_path / "play.yml")]
    refused = subprocess.run([*run, "-e", "frontfleet_namespace=shop:eu"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0
    assert "frontfleet_namespace 'shop:eu' must be letters, digits and _.- (no ':'" in refused.stdout
    accepted = subprocess.run([*run, "-e", "frontfleet_namespace=shop-eu"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


REDIS_PREFLIGHT = """- name: Check the redis role's settings only
  hosts: redis
  gather_facts: false
  tasks:
    - name: Run the redis role's preflight
      ansible.builtin.include_role:
        name: frontfleet.fleet.redis
        tasks_from: preflight
"""


def test_the_redis_play_refuses_memory_limits_that_leave_no_room_naming_them(tmp_path: Path) -> None:
    """A maxmemory below the budget for this inventory's web hosts (docs/reliability.md, "Memory budget"), or a
    proto-max-bulk-len under Redis' minimum, stops the play before Redis is touched; the defaults pass."""
    (tmp_path / "play.yml").write_text(REDIS_PREFLIGHT)
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    run = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(tmp_path / "hosts.yml"),
           str(tmp_path / "play.yml"), "-e", "frontfleet_redis_address=127.0.0.1"]
    for setting in ("redis_maxmemory=64mb", "redis_proto_max_bulk_len=512kb"):
        refused = subprocess.run([*run, "-e", setting], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode != 0, setting
        assert "Redis' memory limits do not fit frontfleet's" in refused.stdout, refused.stdout
        assert "at least 1.25 times redis_maxmemory_clients (49mb) plus 22mb for the keys of 1 web host(s)" in \
            " ".join(refused.stdout.split()), refused.stdout
    accepted = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
