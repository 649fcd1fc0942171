"""What the agent's unit lets it reach (IPAddressAllow=, RestrictAddressFamilies=), from where Redis is."""

from __future__ import annotations

import pytest

from ansible_collections.frontfleet.fleet.plugins.filter.frontfleet_unit import frontfleet_agent_network

pytestmark = pytest.mark.unit


def test_redis_on_loopback_is_covered_by_localhost_so_the_allow_list_rates_localhost_only() -> None:
    # systemd-analyze rates the list "non-localhost" as soon as one entry is not exactly 127.0.0.0/8 or ::1/128
    assert frontfleet_agent_network("127.0.52.2") == {"allow": ["localhost"], "families": ["AF_INET", "AF_UNIX"],
                                                      "invalid": []}
    assert frontfleet_agent_network("::1")["allow"] == ["localhost"]


def test_redis_on_a_private_address_is_listed_and_only_its_address_family_is_allowed() -> None:
    assert frontfleet_agent_network("10.0.3.7") == {"allow": ["localhost", "10.0.3.7"],
                                                    "families": ["AF_INET", "AF_UNIX"], "invalid": []}
    assert frontfleet_agent_network("fd00::7") == {"allow": ["localhost", "fd00::7"],
                                                   "families": ["AF_INET6", "AF_UNIX"], "invalid": []}


def test_a_redis_host_name_is_reported_and_the_extra_addresses_give_the_list() -> None:
    network = frontfleet_agent_network("redis.internal", ["10.0.3.7", "fd00::/64"])
    assert network == {"allow": ["localhost", "10.0.3.7", "fd00::/64"], "families": ["AF_INET", "AF_INET6", "AF_UNIX"],
                       "invalid": ["redis.internal"]}
    assert frontfleet_agent_network("localhost")["families"] == ["AF_INET", "AF_INET6", "AF_UNIX"]
