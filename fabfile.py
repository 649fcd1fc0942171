"""frontfleet's day-to-day commands (`fab rollout`, `fab rollback`, `fab status`, `fab data-set` …) from this
checkout: the tasks of sync_agent/control/fabtasks.py, the same a team's fabfile imports (`frontfleet init`)."""

from sync_agent.control.fabtasks import *  # noqa: F403
