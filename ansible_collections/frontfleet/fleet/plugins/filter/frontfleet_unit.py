"""What the sync agent's systemd unit lets it reach on the network: its IPAddressAllow= and RestrictAddressFamilies=.

`localhost` (127.0.0.0/8 and ::1) is always allowed. An address inside it is not listed again: systemd-analyze
security rates an allow list only as "localhost entries" when every entry is exactly 127.0.0.0/8 or ::1/128, and a
single 127.0.x.y/32 beside them would rate the whole list "non-localhost" (docs/reliability.md).
"""

from __future__ import annotations

import ipaddress
from typing import Any

LOCALHOST = "localhost"


def frontfleet_agent_network(redis_address: str, extra: list[str] | None = None) -> dict[str, list[str]]:
    """{"allow": IPAddressAllow= entries, "families": RestrictAddressFamilies= entries, "invalid": what is not an
    address or prefix} for an agent that talks to Redis at redis_address and may also reach extra."""
    allow = [LOCALHOST]
    families = {"AF_UNIX"}  # sd_notify: READY=1, STATUS=, WATCHDOG=1
    invalid = []
    for entry in [redis_address, *(extra or [])]:
        text = str(entry).strip()
        if text == LOCALHOST:
            families |= {"AF_INET", "AF_INET6"}  # a name: the resolver may answer 127.0.0.1 or ::1
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            invalid.append(text)
            continue
        families.add("AF_INET" if network.version == 4 else "AF_INET6")
        if not network.is_loopback and text not in allow:
            allow.append(text)
    return {"allow": allow, "families": sorted(families), "invalid": invalid}


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict[str, Any]:
        return {"frontfleet_agent_network": frontfleet_agent_network}
