"""What runs on the controller: the control plane that `fab`, `sync-agent` and the release play call.

This package is the one facade: a front end opens a `session` on an inventory's fleet, runs an operation
(`rollout`, `publish`, `rollback`, `abort`, `prune`, `sync_new_hosts`) and prints its `reports` Report. The
modules behind it, one concern each: session (connections, work on every host), rollout (every operation that
changes what the fleet serves), store (Redis), records (what the store records: history, an unfinished rollout,
the record of changes), lock (the deploy lock), hoststatus (acknowledgements, the fleet view),
inventory and remote (Ansible's inventory, OpenSSH), wheels (the agent's wheels for the hosts), progress
(rich, for terminals; imported by the front ends only).
"""

from ..report import Report
from . import reports
from .rollout import (
    DEFAULT_ACK_TIMEOUT,
    HostStaging,
    Progress,
    RolloutResult,
    abort,
    prune,
    publish,
    rollback,
    rollout,
    sync_new_hosts,
)
from .session import Session, session

__all__ = [
    "DEFAULT_ACK_TIMEOUT",
    "HostStaging",
    "Progress",
    "Report",
    "RolloutResult",
    "Session",
    "abort",
    "prune",
    "publish",
    "reports",
    "rollback",
    "rollout",
    "session",
    "sync_new_hosts",
]
