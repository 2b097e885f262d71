"""``keep_current``: the periodic index update that never dies, never logs patient data,
backs off while failing and runs at once when woken."""

from __future__ import annotations

import asyncio
import logging

import pytest

from carelink.errors import SourceUnavailable
from carelink.federation.keeper import keep_current
from carelink.federation.update import UpdateReport

NHS = "9434765919"


def test_failures_are_logged_without_data_retried_with_backoff_and_survived(caplog):
    calls: list[str] = []
    outcomes = [
        SourceUnavailable("gp", f"no answer about {NHS}"),
        RuntimeError(f"bad row {NHS}"),
        None,
        None,
    ]
    reports: list[UpdateReport] = []

    enough = asyncio.Event()

    async def update() -> UpdateReport:
        calls.append("update")
        if len(calls) >= 4:
            enough.set()
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if outcome is not None:
            raise outcome
        return UpdateReport(listed={"gp": 1})

    async def scenario() -> None:
        task = asyncio.create_task(
            keep_current(update, every=0.01, backoff=(0.01, 0.02), done=reports.append)
        )
        await enough.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="carelink.index"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "index update failed: SourceUnavailable at gp; retrying until it works"
    assert lines[1].startswith("index update works again after ")
    assert len(lines) == 2  # one line when the trouble starts, one when it ends
    assert not any(NHS in line for line in lines)
    assert len(reports) >= 2


def test_a_wake_runs_the_next_update_at_once_and_a_cursor_behind_runs_it_again():
    stamps: list[float] = []
    behind = [True, False, False]

    async def scenario() -> None:
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        runs = [asyncio.Event() for _ in range(4)]

        async def update() -> UpdateReport:
            stamps.append(loop.time())
            runs[len(stamps)].set()
            return UpdateReport(behind=behind[min(len(stamps), 3) - 1])

        task = asyncio.create_task(keep_current(update, every=60, wake=wake))
        await runs[2].wait()
        await asyncio.sleep(0.05)
        assert len(stamps) == 2  # caught up: now waiting up to a minute
        wake.set()
        await runs[3].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(stamps) == 3
