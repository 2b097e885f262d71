"""Group commit's gathering window (``GroupCommit(gather=..., gather_events=...)``): the
events of requests that come while a batch gathers share its commit, and still no
request is answered before the commit that holds its events has returned; a writer
killed in the middle of a batch loses no event whose request was answered.

The trail is the real one (``AuditTrail`` on a thread, or the writer process); where a
commit must be held back or the writer killed at a chosen moment, a thin committer in
front of the real one does that and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import orjson

from carelink.audit import Access, AuditTrail, GroupCommit, RequestEvents, Who, verify
from carelink.audit.trail import OnThread, Serving
from carelink.audit.writer import WriterProcess, WriterSpec
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore

_WHO = Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example")


def _rows(n: int, events: int = 1) -> list[Any]:
    """Request ``n``'s events, each with an id of its own (``e{n}.{k}``)."""
    access = Access("search-type", f"/fhir/Patient?n={n}", f"r{n}", "2026-12-02T08:00:00Z", "b")
    ids = iter(f"e{n}.{k}" for k in range(events))
    return RequestEvents(access, _WHO, "0").rows([f"p{n}.{k}" for k in range(events)], ids.__next__)


def _stored(db: Database) -> set[str]:
    """The ids of the events in the trail, read on a connection of its own."""
    return {orjson.loads(row.event)["id"] for row in AuditStore(db).rows()}


def _run(scenario: Any) -> Any:
    """A bound of its own for each scenario: a window that never ended fails the test
    rather than hanging it."""
    return asyncio.run(asyncio.wait_for(scenario, 60))


class Held:
    """The real trail's committer, each commit held until ``open`` is set."""

    def __init__(self, inner: OnThread) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.batches: list[int] = []

    async def record(self, events: Sequence[Any]) -> None:
        await self.open.wait()
        await self.inner.record(events)
        self.batches.append(len(events))

    async def tick(self) -> None:
        await self.inner.tick()

    def close(self) -> None:
        self.inner.close()


def test_requests_that_come_while_a_batch_gathers_share_one_commit(db):
    """Five requests, the window ended by the fifth event (its time bound an hour): one
    commit of five, and each request, once answered, finds its event in the trail."""
    heard: list[int] = []
    group = GroupCommit(
        AuditTrail(AuditStore(db)), lambda s, n: heard.append(n), gather=3600, gather_events=5
    )

    async def ask(n: int) -> None:
        await asyncio.sleep(0.001 * n)  # one after another, while the batch gathers
        await group.record(_rows(n))
        assert f"e{n}.0" in _stored(db)  # answered: committed

    async def scenario() -> None:
        await asyncio.gather(*(ask(n) for n in range(5)))

    _run(scenario())
    group.close()
    assert heard == [5]
    assert _stored(db) == {f"e{n}.0" for n in range(5)}
    assert verify(AuditStore(db).rows()) == []


def test_a_window_bounded_by_time_alone_ends_and_commits(db):
    """No count bound: a lone request's batch is committed when its window ends."""
    group = GroupCommit(AuditTrail(AuditStore(db)), gather=0.02)

    async def scenario() -> None:
        await group.record(_rows(1, events=3))
        await group.record(_rows(2))

    _run(scenario())
    group.close()
    assert group.commits == 2
    assert _stored(db) == {"e1.0", "e1.1", "e1.2", "e2.0"}


def test_no_request_is_answered_before_its_commit_however_full_its_batch(db):
    """The window ends at once (the batch is full), but the commit is held: nobody is
    answered until it returns, and then everybody is, with the events in the trail."""
    held = Held(OnThread(AuditTrail(AuditStore(db))))
    group = GroupCommit(held, gather=3600, gather_events=2)

    async def scenario() -> None:
        asked = [asyncio.create_task(group.record(_rows(n, events=2))) for n in range(3)]
        for _ in range(20):
            await asyncio.sleep(0.005)
            assert not any(t.done() for t in asked)  # held: nobody answered
        assert _stored(db) == set()
        held.open.set()
        await asyncio.gather(*asked)

    _run(scenario())
    group.close()
    assert sum(held.batches) == 6
    assert _stored(db) == {f"e{n}.{k}" for n in range(3) for k in range(2)}


class KilledOnce:
    """The real writer process, killed (SIGKILL) once, just after the frame of batch
    ``at`` was sent and before its answer."""

    def __init__(self, writer: WriterProcess, at: int) -> None:
        self.writer = writer
        self.at = at
        self.batches = 0

    async def record(self, events: Sequence[Any]) -> None:
        self.batches += 1
        if self.batches != self.at:
            await self.writer.record(events)
            return
        sending = asyncio.ensure_future(self.writer.record(events))
        await asyncio.sleep(0)  # the frame is written to the child's socket
        assert self.writer._proc is not None
        os.kill(self.writer._proc.pid, signal.SIGKILL)
        await sending

    async def tick(self) -> None:
        await self.writer.tick()

    def close(self) -> None:
        self.writer.close()


def test_a_writer_killed_mid_batch_loses_no_answered_event(db):
    """Requests in waves of four through a gathering window; the writer is killed in the
    middle of the third batch. Its requests fail closed; every request answered has its events
    in the trail, later batches go to a new writer, and the chain verifies."""
    killing = KilledOnce(WriterProcess(WriterSpec(db.url)), at=3)
    group = GroupCommit(killing, gather=0.002, gather_events=6)

    async def ask(n: int) -> bool:
        try:
            await group.record(_rows(n, events=2))
        except AuditError:
            return False
        return True

    async def scenario() -> list[bool]:
        await killing.writer.start()
        answered: list[bool] = []
        for wave in range(10):  # four requests at once, a wave after the one before
            answered += await asyncio.gather(*(ask(wave * 4 + i) for i in range(4)))
        return answered

    answered = _run(scenario())
    group.close()
    stored = _stored(db)
    assert killing.batches > 3
    assert not all(answered)  # the killed batch's requests were refused
    assert any(answered[n] for n in range(36, 40))  # and the writer came back
    for n, ok in enumerate(answered):
        if ok:
            assert {f"e{n}.0", f"e{n}.1"} <= stored
    assert verify(AuditStore(db).rows()) == []


def test_a_request_that_comes_just_as_the_window_ends_by_time_is_committed(db):
    """The window's time runs out while the loop is busy, and a request woken in the same
    turn, just before the batch is taken, fills it to ``gather_events``: both requests
    are committed (the ended window is not ended a second time)."""
    group = GroupCommit(AuditTrail(AuditStore(db)), gather=0.005, gather_events=2)

    async def later() -> None:
        await asyncio.sleep(0.001)  # due before the window's end
        await group.record(_rows(2))

    async def scenario() -> None:
        first = asyncio.create_task(group.record(_rows(1)))
        for _ in range(3):  # the first request recorded, its batch gathering
            await asyncio.sleep(0)
        second = asyncio.create_task(later())
        await asyncio.sleep(0)  # its timer set
        time.sleep(0.02)  # noqa: ASYNC251 - the loop held on purpose: both timers due
        await asyncio.gather(first, second)

    _run(scenario())
    group.close()
    assert _stored(db) == {"e1.0", "e2.0"}


def test_a_request_served_alone_is_committed_without_waiting_for_the_window(db):
    """An hour's window, but nothing else in flight: the commit goes at once (a wait for
    the window would overrun the scenario's bound and fail the test)."""
    serving = Serving()
    group = GroupCommit(AuditTrail(AuditStore(db)), gather=3600, gather_events=64, serving=serving)

    async def scenario() -> None:
        for n in range(3):
            serving.now = 1
            await group.record(_rows(n, events=13))
            serving.now = 0

    _run(scenario())
    group.close()
    assert group.commits == 3
    assert verify(AuditStore(db).rows()) == []


def test_a_window_waits_for_the_requests_in_flight_and_ends_when_they_are_all_in(db):
    """Three requests in flight, the third's events coming a moment after the first two:
    the window (an hour) waits for it, then ends at once: one commit of the three."""
    heard: list[int] = []
    serving = Serving()
    serving.now = 3
    group = GroupCommit(
        AuditTrail(AuditStore(db)),
        lambda s, n: heard.append(n),
        gather=3600,
        gather_events=64,
        serving=serving,
    )

    async def ask(n: int) -> None:
        await asyncio.sleep(0.05 * n)
        await group.record(_rows(n, events=2))
        assert f"e{n}.1" in _stored(db)

    async def scenario() -> None:
        await asyncio.gather(*(ask(n) for n in range(3)))

    _run(scenario())
    group.close()
    assert heard == [6]
    assert _stored(db) == {f"e{n}.{k}" for n in range(3) for k in range(2)}
