"""The agent's task plumbing, without Redis: what a batch's time counts toward the probe, and a session's end."""

from __future__ import annotations

import asyncio
import time

import pytest

from sync_agent.host.agent import _finish, _Timed

pytestmark = pytest.mark.unit


async def test_a_batch_is_excused_the_time_it_runs_not_the_time_it_awaits() -> None:
    ran: list[float] = []

    async def batch() -> str:
        time.sleep(0.05)  # work: the loop runs nothing else
        await asyncio.sleep(0.3)  # an await: a snapshot read, a status write, a lock
        time.sleep(0.05)
        return "done"

    assert await _Timed(batch(), ran.append) == "done"
    assert 0.1 <= sum(ran) < 0.25


async def test_a_timed_batch_is_cancelled_where_it_awaits() -> None:
    seen: list[str] = []

    async def batch() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def consume() -> None:
        await _Timed(batch(), lambda _: None)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


async def test_a_task_that_goes_on_after_its_cancellation_is_cancelled_again() -> None:
    lost = asyncio.Event()

    async def heartbeat() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # lost, as Python 3.11's wait_for can lose it
            lost.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(heartbeat(), name="heartbeat")
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await _finish([task])
    assert lost.is_set() and task.cancelled()
