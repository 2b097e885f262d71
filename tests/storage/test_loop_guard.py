"""Database work and the event loop: ``Database.run`` awaits it without holding the loop,
within the time limit, and fails at once while an earlier call is stuck; ``@loop_bounded``
stores wait at most that limit when they are called on the loop anyway (PostgreSQL).

A call "stuck on the database" is one that waits on an event the test sets when the
database is "back"; the PostgreSQL ``Database`` here is never connected to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from carelink.errors import StorageUnavailable
from carelink.storage import Database
from carelink.storage.loop_guard import bounds_itself, loop_bounded

LIMIT = 0.3
NOWHERE = "postgresql://carelink@127.0.0.1:1/none"


@loop_bounded
class Store:
    """A store whose every method waits until the database is back."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.back = threading.Event()

    def read(self) -> int:
        self.back.wait(10)
        return threading.get_ident()

    @bounds_itself
    def own_limit(self) -> int:
        return threading.get_ident()

    def rows(self) -> Iterator[int]:
        yield threading.get_ident()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Iterator[Database]:
    url = str(tmp_path / "run.db") if request.param == "sqlite" else NOWHERE
    database = Database(url, statement_timeout=LIMIT)
    yield database
    database.dispose()


async def _ticking(work) -> tuple[object, int]:
    """``work``'s outcome (its result or exception) and how often the loop ticked meanwhile."""
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        outcome: object = await work
    except StorageUnavailable as exc:
        outcome = exc
    done.set()
    await ticker
    return outcome, ticks


def test_run_keeps_the_loop_serving_and_answers_503_within_the_limit(db):
    store = Store(db)

    async def scenario() -> tuple[object, int, float, object]:
        start = time.monotonic()
        outcome, ticks = await _ticking(db.run(store.read))
        took = time.monotonic() - start
        start = time.monotonic()
        try:
            await db.run(store.read)
            again: object = None
        except StorageUnavailable as exc:
            again = (exc, time.monotonic() - start)
        store.back.set()  # the database is back: the stuck call returns
        await asyncio.sleep(0.05)
        return outcome, ticks, took, (again, await db.run(store.read))

    outcome, ticks, took, ((again, again_took), recovered) = asyncio.run(scenario())
    assert isinstance(outcome, StorageUnavailable)
    assert LIMIT <= took < LIMIT + 0.5
    assert ticks >= 10  # the loop went on meanwhile (about every 10 ms)
    assert isinstance(again, StorageUnavailable)  # refused at once while the first is stuck
    assert again_took < 0.05
    assert recovered != threading.get_ident()  # answered, on one of the database's threads


def test_run_inline_calls_on_the_loops_own_thread(db):
    store = Store(db)
    assert asyncio.run(db.run(store.own_limit, inline=True)) == threading.get_ident()


def test_looked_up_runs_inline_on_sqlite_only(db):
    store = Store(db)
    where = asyncio.run(db.looked_up(store.own_limit))
    assert (where == threading.get_ident()) == db.is_sqlite


def test_a_store_method_called_on_the_loop_waits_at_most_the_limit_on_postgresql():
    db = Database(NOWHERE, statement_timeout=LIMIT)
    store = Store(db)

    async def on_the_loop() -> float:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.read()
        return time.monotonic() - start

    try:
        assert LIMIT <= asyncio.run(on_the_loop()) < LIMIT + 0.5
    finally:
        store.back.set()
        db.dispose()


def test_off_the_loop_and_on_sqlite_a_store_method_is_simply_called(tmp_path):
    remote = Store(Database(NOWHERE, statement_timeout=LIMIT))
    remote.back.set()
    assert remote.read() == threading.get_ident()  # no loop: called right here
    local = Store(Database(str(tmp_path / "local.db"), statement_timeout=LIMIT))
    local.back.set()

    async def on_the_loop() -> int:
        return local.read()

    assert asyncio.run(on_the_loop()) == threading.get_ident()


def test_methods_that_bound_themselves_and_generators_are_left_alone():
    store = Store(Database(NOWHERE, statement_timeout=LIMIT))

    async def on_the_loop() -> tuple[int, list[int]]:
        return store.own_limit(), list(store.rows())

    assert asyncio.run(on_the_loop()) == (threading.get_ident(), [threading.get_ident()])


def test_a_thread_waits_for_a_pooled_sqlite_connection_no_longer_than_for_a_new_one(tmp_path):
    db = Database(str(tmp_path / "pool.db"), connect_timeout=2.5)
    assert db.engine.pool.timeout() == 2.5  # type: ignore[attr-defined]
    db.dispose()


def test_run_hands_back_the_calls_own_error_and_a_cancelled_call_waiting_for_a_thread_never_runs(
    tmp_path,
):
    """What the database thread raised is what the awaiting caller gets (the very
    exception, not a 503); a call cancelled while every database thread is busy is
    dropped before it starts, and the threads then serve the next calls."""
    db = Database(str(tmp_path / "run.db"), statement_timeout=5.0, threads=1)
    back = threading.Event()
    ran: list[str] = []
    wrong = ValueError("the statement's own error")

    def fails() -> None:
        raise wrong

    def busy() -> str:
        back.wait(5)
        return "busy"

    async def scenario() -> tuple[BaseException | None, bool, str, str]:
        try:
            await db.run(fails)
            raised = None
        except ValueError as exc:
            raised = exc
        holding = asyncio.ensure_future(db.run(busy))
        waiting = asyncio.ensure_future(db.run(ran.append, "waiting"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0.05)
        back.set()
        held = await holding
        await asyncio.sleep(0.05)
        return raised, waiting.cancelled(), held, await db.run(str, "next")

    try:
        raised, cancelled, held, after = asyncio.run(scenario())
    finally:
        back.set()
        db.dispose()
    assert raised is wrong
    assert cancelled
    assert ran == []  # cancelled before a thread was free: never ran
    assert (held, after) == ("busy", "next")


def test_a_call_that_timed_out_waiting_for_a_thread_never_runs_after_its_503(tmp_path):
    """A call still queued when its limit passes gets its 503 (``StorageUnavailable``)
    and is dropped: a write must not land after its request was already refused. Fails
    when the timed-out call is left in the thread pool's queue."""
    db = Database(str(tmp_path / "late.db"), statement_timeout=5.0, threads=1)
    back = threading.Event()
    ran: list[str] = []

    def busy() -> str:
        back.wait(5)
        return "busy"

    async def scenario() -> tuple[bool, str, str]:
        holding = asyncio.ensure_future(db.run(busy))
        await asyncio.sleep(0.05)
        try:
            await db.run(ran.append, "late", limit=0.2)
            refused = False
        except StorageUnavailable:
            refused = True
        back.set()
        held = await holding
        await asyncio.sleep(0.1)  # a queued call would have run by now
        return refused, held, await db.run(str, "next")

    try:
        refused, held, after = asyncio.run(scenario())
    finally:
        back.set()
        db.dispose()
    assert refused
    assert ran == []
    assert (held, after) == ("busy", "next")
