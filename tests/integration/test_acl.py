"""The generated ACL rules, loaded into a real Redis and proven with real connections."""

from __future__ import annotations

import pytest
import redis

from sync_agent.errors import ProtocolError
from sync_agent.protocol import PUBLISHER_USER, Keys, acl_user, agent_acl_rules, agent_user, publisher_acl_rules
from tests.servers import new_store

pytestmark = pytest.mark.integration

KEYS = Keys("ff")


@pytest.fixture
def users(fresh_redis):
    admin = fresh_redis.client()
    for host in ("web1", "web2"):
        admin.execute_command("ACL", "SETUSER", agent_user(host), "on", ">agentpw", *agent_acl_rules(KEYS, host))
    admin.execute_command("ACL", "SETUSER", PUBLISHER_USER, "on", ">pubpw", *publisher_acl_rules(KEYS))
    admin.set("other:secret", "x")

    def connect(user: str, password: str) -> redis.Redis:
        return redis.Redis(host=fresh_redis.host, port=fresh_redis.port, username=user, password=password,
                           decode_responses=True)

    return connect


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_agent_reads_the_namespace_and_writes_only_its_own_status(users):
    new_store(users(PUBLISHER_USER, "pubpw"), "ff").data_set("flag", "true")
    agent = users("agent-web1", "agentpw")
    assert agent.hget(KEYS.data, "flag") == "true"
    pipe = agent.pipeline(transaction=True)
    pipe.get(KEYS.epoch)
    pipe.hgetall(KEYS.desired)
    assert len(pipe.execute()) == 2
    assert agent.set(KEYS.host("web1"), '{"release":"A"}') is True
    assert agent.time()
    assert refused(lambda: agent.set(KEYS.host("web2"), '{"release":"A"}'))
    assert refused(lambda: agent.hset(KEYS.status("web1"), "release", "A"))  # the hash of agents before NS:host
    assert refused(lambda: agent.hset(KEYS.data, "flag", "false"))
    assert refused(lambda: agent.set(KEYS.revision, 99))
    assert refused(lambda: agent.get("other:secret"))
    assert refused(lambda: agent.flushall())
    assert refused(lambda: agent.eval("return 1", 0))


def test_agent_subscribes_to_events_and_its_probe_and_publishes_only_its_probe(users):
    agent = users("agent-web1", "agentpw")
    pubsub = agent.pubsub()
    pubsub.subscribe(KEYS.events, KEYS.probe("web1"))
    confirmations = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [c["channel"] for c in confirmations] == [KEYS.events, KEYS.probe("web1")]
    assert agent.publish(KEYS.probe("web1"), "probe") == 1
    assert refused(lambda: agent.publish(KEYS.events, '{"v":1}'))
    assert refused(lambda: agent.publish(KEYS.probe("web2"), "probe"))
    other = users("agent-web1", "agentpw").pubsub()
    assert refused(lambda: (other.subscribe(KEYS.probe("web2")), other.get_message(timeout=1)))
    pubsub.close()


def test_publisher_runs_the_scripts_within_the_namespace_only(users):
    publisher = users(PUBLISHER_USER, "pubpw")
    store = new_store(publisher, "ff")
    assert store.data_set("flag", "1").revision == 1
    assert store.activate("A").revision == 2
    assert publisher.set(KEYS.host("web1"), "{}") is True
    assert refused(lambda: publisher.get("other:secret"))
    assert refused(lambda: publisher.flushall())
    assert refused(lambda: publisher.keys("*"))
    assert refused(lambda: publisher.execute_command("ACL", "SETUSER", "evil", "on"))
    assert refused(lambda: publisher.config_set("appendonly", "no"))


def test_default_user_rules_do_not_leak_between_hosts(users):
    web2 = users("agent-web2", "agentpw")
    assert refused(lambda: web2.set(KEYS.host("web1"), '{"release":"forged"}'))


def test_two_fleets_on_one_redis_cannot_reach_each_others_keys(fresh_redis):
    """`shop` and `shop-eu` share a prefix but no `:`: neither's agent nor publisher reaches the other's keys,
    whose names `shop:eu` would have made `shop:*` cover."""
    with pytest.raises(ProtocolError, match="namespace 'shop:eu' contains ':'"):
        Keys("shop:eu")
    admin = fresh_redis.client()
    fleets = {name: Keys(name) for name in ("shop", "shop-eu")}
    for name, keys in fleets.items():
        for host in (None, "web1"):
            user, rules = acl_user(keys, host)
            admin.execute_command("ACL", "SETUSER", f"{name}-{user}", "on", f">{name}pw", *rules)
        new_store(admin, name).data_set("flag", f'"{name}"')

    def connect(name: str, user: str) -> redis.Redis:
        return redis.Redis(host=fresh_redis.host, port=fresh_redis.port, username=f"{name}-{user}",
                           password=f"{name}pw", decode_responses=True)

    for name, other in (("shop", "shop-eu"), ("shop-eu", "shop")):
        mine, theirs = fleets[name], fleets[other]
        agent = connect(name, agent_user("web1"))
        assert agent.hget(mine.data, "flag") == f'"{name}"'
        assert agent.set(mine.host("web1"), '{"release":"A"}') is True
        assert refused(lambda: agent.hget(theirs.data, "flag"))  # noqa: B023 - called right here
        assert refused(lambda: agent.set(theirs.host("web1"), '{"release":"forged"}'))  # noqa: B023
        assert refused(lambda: agent.publish(theirs.probe("web1"), "x"))  # noqa: B023
        publisher = connect(name, PUBLISHER_USER)
        assert refused(lambda: publisher.hset(theirs.data, "flag", "1"))  # noqa: B023
        assert refused(lambda: publisher.publish(theirs.events, "{}"))  # noqa: B023
    assert admin.hget(fleets["shop"].data, "flag") == '"shop"' and admin.hget(fleets["shop-eu"].data, "flag") == \
        '"shop-eu"'
