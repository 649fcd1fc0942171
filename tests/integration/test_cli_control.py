"""`sync-agent` control commands as a user runs them: real processes, real Redis, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sync_agent.control.lock import DeployLock
from sync_agent.control.store import release_metadata
from sync_agent.errors import EXIT_UNAVAILABLE, EXIT_UNHEALTHY, EXIT_USAGE
from tests.servers import new_store

pytestmark = pytest.mark.integration

SYNC_AGENT = str(Path(sys.executable).with_name("sync-agent"))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYNC_AGENT, *args], env=env, capture_output=True, text=True, timeout=30)


def test_data_set_get_list_del_round_trip(publisher_env):
    assert run("data", "set", "banner", '{"text": "hi"}', env=publisher_env).returncode == 0
    got = run("data", "get", "banner", env=publisher_env)
    assert got.returncode == 0 and json.loads(got.stdout) == {"text": "hi"}
    listed = run("data", "list", "--json", env=publisher_env)
    assert json.loads(listed.stdout) == {"banner": {"text": "hi"}}
    deleted = run("data", "del", "banner", env=publisher_env)
    assert deleted.returncode == 0 and "deleted at revision 2" in deleted.stdout


def test_a_value_that_is_not_json_exits_2_with_a_hint(publisher_env):
    result = run("data", "set", "flag", "on", env=publisher_env)
    assert result.returncode == EXIT_USAGE
    assert "not valid JSON" in result.stderr and "Traceback" not in result.stderr
    assert run("data", "list", "--json", env=publisher_env).stdout.strip() == "{}"


def test_a_traversal_key_exits_2(publisher_env):
    result = run("data", "set", "../x", "1", env=publisher_env)
    assert result.returncode == EXIT_USAGE and "no '/'" in result.stderr


def test_getting_a_missing_key_says_how_to_list_keys(publisher_env):
    result = run("data", "get", "nope", env=publisher_env)
    assert result.returncode == EXIT_USAGE and "data list" in result.stderr


def test_an_unreachable_redis_exits_3(publisher_env, fresh_redis):
    from tests.conftest import free_port

    env = {**publisher_env, "FRONTFLEET_REDIS_URL": f"redis://publisher@127.0.0.1:{free_port()}/0"}
    result = run("data", "set", "a", "1", env=env)
    assert result.returncode == EXIT_UNAVAILABLE and "cannot reach Redis" in result.stderr


def test_a_wrong_password_is_reported_not_a_traceback(publisher_env, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    result = run("data", "list", env={**publisher_env, "FRONTFLEET_REDIS_PASSWORD_FILE": str(wrong)})
    assert result.returncode == EXIT_UNAVAILABLE and "Traceback" not in result.stderr


def test_no_redis_configured_tells_how_to_configure_it():
    result = run("data", "list", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == EXIT_USAGE and "FRONTFLEET_REDIS_URL" in result.stderr


def test_release_list_shows_the_activation_history_with_labels(publisher_env, fresh_redis):
    store = new_store(fresh_redis.client(), "ff")
    for release in ("rel-a", "rel-b"):
        store.activate(release, release_metadata(f"label {release}"))
    listed = json.loads(run("release", "list", "--json", env=publisher_env).stdout)
    assert [(r["release"], r["current"], r["label"]) for r in listed] == [
        ("rel-a", False, "label rel-a"), ("rel-b", True, "label rel-b")]
    text = run("release", "list", env=publisher_env).stdout.splitlines()
    assert text[1].startswith("* rel-b  label rel-b") and text[0].startswith("  rel-a")


def test_release_publish_takes_no_redis_url_it_goes_through_a_fleets_checks(publisher_env):
    result = run("release", "publish", "rel-a", "--redis", "redis://publisher@127.0.0.1:1/0", env=publisher_env)
    assert result.returncode == EXIT_USAGE and "unrecognized arguments: --redis" in result.stderr


def test_lock_shows_the_holder_and_force_breaks_it_naming_the_holder(publisher_env, fresh_redis):
    DeployLock(fresh_redis.client(), "ff").acquire("rollout by alice@ops pid 1")
    shown = run("lock", env=publisher_env)
    assert "held by rollout by alice@ops" in shown.stdout
    forced = run("lock", "--force", env=publisher_env)
    assert forced.returncode == 0 and "broke the deploy lock held by rollout by alice@ops" in forced.stderr
    assert run("lock", "--json", env=publisher_env).stdout.count('"holder": null') == 1


def test_fleet_exits_5_while_a_host_never_reported(publisher_env):
    result = run("fleet", "--hosts", "web1,web2", "--json", env=publisher_env)
    assert result.returncode == EXIT_UNHEALTHY
    assert [row["healthy"] for row in json.loads(result.stdout)["hosts"]] == [False, False]


def test_acl_prints_a_loadable_users_acl_line():
    result = run("acl", "--host", "web1", env={"PATH": "/usr/bin:/bin", "FRONTFLEET_NAMESPACE": "ff"})
    assert result.returncode == 0
    assert result.stdout.startswith("user agent-web1 on resetpass >PASSWORD ")
    assert "(+publish &ff:probe:web1)" in result.stdout
    bad = run("acl", "--host", "../x", env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == EXIT_USAGE


def test_a_namespace_with_a_colon_is_refused_from_the_option_and_the_environment(publisher_env):
    by_option = run("--namespace", "shop:eu", "data", "list", env=publisher_env)
    by_env = run("data", "list", env={**publisher_env, "FRONTFLEET_NAMESPACE": "shop:eu"})
    for result in (by_option, by_env):
        assert result.returncode == EXIT_USAGE
        assert "namespace 'shop:eu' contains ':'" in result.stderr and "Traceback" not in result.stderr
