"""Run the sync agent with one fault built in: `python agent_faults.py FAULT AGENT_COMMAND... CONFIG`.

Used as an Agent.start(prefix=...) by the liveness tests, to put the agent deterministically in a state that
real load reaches only by chance. The fault is announced on stdout (the agent's log) when it strikes.

- lost-cancel: the heartbeat goes on after its first cancellation, as a task does when Python 3.11's
  asyncio.wait_for (inside redis-py's send_packed_command) returns the command's result instead of raising
  because the command completed as the cancel arrived.
- stuck-render: the first template render in the reading loop awaits something that never comes: the batch
  never ends, and nothing reads the subscription.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from sync_agent.host.agent import Agent, main
from sync_agent.host.bus import Bus


def strike(fault: str) -> None:
    print(f"FAULT {fault}", flush=True)


def lose_a_cancellation() -> None:
    heartbeat = Agent._heartbeat_loop
    lost = False

    async def heartbeat_that_goes_on(self: Agent, bus: Bus) -> None:
        nonlocal lost
        try:
            await heartbeat(self, bus)
        except asyncio.CancelledError:
            if lost:
                raise
            lost = True
            strike("lost-cancel")
            await heartbeat(self, bus)  # heartbeats go on: the host looks alive

    Agent._heartbeat_loop = heartbeat_that_goes_on  # type: ignore[method-assign]


def stick_a_render() -> None:
    render = Agent._render
    stuck = False

    async def render_once_stuck(self: Agent, bus: Bus) -> Any:
        nonlocal stuck
        task = asyncio.current_task()
        if not stuck and task is not None and task.get_name() == "consume":
            stuck = True
            strike("stuck-render")
            await asyncio.Event().wait()
        return await render(self, bus)

    Agent._render = render_once_stuck  # type: ignore[method-assign]


FAULTS = {"lost-cancel": lose_a_cancellation, "stuck-render": stick_a_render}

if __name__ == "__main__":
    FAULTS[sys.argv[1]]()
    sys.exit(main(sys.argv[-1]))  # the agent's command ends with its config file
