"""Group commit's bound on waiting: a request waits at most ``timeout`` for the commit
that holds its event, then fails closed (``AuditError``), whether its commit is the one
stuck or it is queued behind it; while a commit is stuck, new requests fail at once;
when the database answers again, commits go on.

The committer here is a stand-in for the database end (the writer process), which
this test makes stall on demand; what is under test is ``GroupCommit`` itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from carelink.audit import GroupCommit
from carelink.errors import AuditError

TIMEOUT = 0.3


class Stalling:
    """Commits at once while ``open`` is set; otherwise waits until it is."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.committed: list[Any] = []

    async def record(self, events: Sequence[Any]) -> None:
        await self.open.wait()
        self.committed.extend(events)

    async def tick(self) -> None:
        return None

    def close(self) -> None:
        return None


def _run(scenario: Any) -> None:
    """Run a scenario with a bound of its own: a failed step fails the test, never hangs
    it (a commit left stuck by a failed assertion would wait for ever)."""
    asyncio.run(asyncio.wait_for(scenario, 30))


async def _timed(awaitable: Any) -> tuple[str, float]:
    started = time.monotonic()
    try:
        await awaitable
    except AuditError:
        return "failed", time.monotonic() - started
    return "ok", time.monotonic() - started


def test_a_stuck_commit_fails_its_requests_and_those_behind_it_within_the_timeout():
    async def scenario() -> None:
        db = Stalling()
        group = GroupCommit(db, timeout=TIMEOUT)
        await group.record([{"n": 0}])  # a healthy commit first
        db.open.clear()  # the database freezes
        first = asyncio.create_task(_timed(group.record([{"n": 1}])))
        await asyncio.sleep(0.05)  # its commit is under way (and stuck) now
        behind = asyncio.create_task(_timed(group.record([{"n": 2}])))
        (first_outcome, first_waited), (behind_outcome, behind_waited) = await asyncio.wait_for(
            asyncio.gather(first, behind), TIMEOUT + 5
        )
        assert (first_outcome, behind_outcome) == ("failed", "failed")
        assert first_waited < TIMEOUT + 1.0
        assert behind_waited < TIMEOUT + 1.0
        # still stuck: a new request fails at once rather than waiting again
        outcome, waited = await _timed(group.record([{"n": 3}]))
        assert outcome == "failed"
        assert waited < TIMEOUT / 2
        db.open.set()  # the database answers again
        await asyncio.sleep(0.05)
        assert await _timed(group.record([{"n": 4}])) == ("ok", pytest.approx(0, abs=1.0))
        assert {"n": 4} in db.committed

    _run(scenario())


def test_requests_of_a_slow_commit_that_ends_in_time_succeed():
    async def scenario() -> None:
        db = Stalling()
        group = GroupCommit(db, timeout=TIMEOUT)
        db.open.clear()
        waiting = [asyncio.create_task(_timed(group.record([{"n": i}]))) for i in range(5)]
        await asyncio.sleep(TIMEOUT / 3)
        db.open.set()
        results = await asyncio.gather(*waiting)
        assert [r[0] for r in results] == ["ok"] * 5
        assert sorted(e["n"] for e in db.committed) == list(range(5))

    _run(scenario())
