"""Writes on the request path (stored search results, resource locations) and the
stored-result read, run as the request path runs them (``Database.run``), leave the
event loop free: a database that stalls (here a SQLite file another connection holds
locked) holds the caller, never the loop, and once one call
is stuck the next ones are refused at once. Found by the Locust run with a database
freeze (``loadtests/README.md``): either write on the loop froze both workers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from carelink.errors import StorageUnavailable
from carelink.storage import Database, LocationStore, ResultStore


def _locked_for(
    path: str, seconds: float, release: threading.Event | None = None
) -> threading.Thread:
    """Another connection holds the file's write lock from now for ``seconds``, or until
    ``release`` is set when one is given."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        if release is None:
            time.sleep(seconds)
        else:
            release.wait(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    locker = threading.Thread(target=hold, daemon=True)
    locker.start()
    held.wait(5)
    return locker


def _locked_database(tmp_path, timeout: float, locked: float) -> tuple[Database, threading.Thread]:
    """A migrated SQLite database whose file another connection locks for ``locked`` s."""
    path = str(tmp_path / "r.db")
    db = Database(path, statement_timeout=timeout)
    db.migrate()
    return db, _locked_for(path, locked)


async def _ticks_while(call: asyncio.Future[object] | asyncio.Task[object]) -> int:
    ticks = 0
    while not call.done():
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


def test_a_stored_result_waiting_for_a_locked_database_leaves_the_loop_free(tmp_path):
    db, locker = _locked_database(tmp_path, timeout=5.0, locked=1.0)
    store = ResultStore(db)

    async def go() -> tuple[int, bytes | None]:
        call = asyncio.ensure_future(db.run(store.put, "c1", "alice", b"body", 2e9, 1.0))
        ticks = await _ticks_while(call)
        await call
        return ticks, await db.run(store.get, "c1", "alice", 2.0)

    ticks, body = asyncio.run(go())
    locker.join()
    assert body == b"body"
    assert ticks >= 20  # the loop ran all the while (it would tick 0 times if held)
    db.dispose()


def test_resource_locations_waiting_for_a_locked_database_leave_the_loop_free(tmp_path):
    db, locker = _locked_database(tmp_path, timeout=5.0, locked=1.0)
    store = LocationStore(db)

    async def go() -> tuple[int, int]:
        call = asyncio.ensure_future(db.run(store.record, "p1", [("Observation", "acute-1")], "T1"))
        return await _ticks_while(call), await call

    ticks, written = asyncio.run(go())
    locker.join()
    assert written == 1
    assert store.person_of("Observation", "acute-1") == "p1"
    assert ticks >= 20
    store.close()
    db.dispose()


def test_a_stuck_database_is_refused_in_the_time_limit_and_then_at_once(tmp_path):
    """A call waiting longer than its limit is refused (``StorageUnavailable``) at the
    limit, the next call at once while the first is still stuck, and once the database
    is back and the stuck call has returned, calls go through again. The stuck call's
    write, answered as not made, is not made when the lock goes (its commit refused):
    made then, a retry would make it twice.

    The database stays stuck until the test releases it, and SQLite's own busy wait (the
    statement timeout, 30 s) outlasts the caller's limit (0.5 s): were the two equal,
    the busy wait could end first on a loaded machine, and the call fail with SQLite's
    "database is locked" instead, leaving nothing stuck to refuse the next call for."""
    path = str(tmp_path / "r.db")
    db = Database(path, statement_timeout=30.0)
    db.migrate()
    release = threading.Event()
    locker = _locked_for(path, 60.0, release)
    store = ResultStore(db)

    async def go() -> tuple[float, float, bytes | None]:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await db.run(store.put, "c1", "alice", b"body", 2e9, 1.0, limit=0.5)
        first = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(StorageUnavailable):
            # its own limit is the statement timeout: refused at once, not after 30 s
            await db.run(store.get, "c1", "alice", 2.0)
        second = time.monotonic() - start
        release.set()
        for _ in range(600):  # the stuck put finishes once the lock is gone (within 30 s)
            try:
                return first, second, await db.run(store.get, "c1", "alice", 2.0)
            except StorageUnavailable:  # still stuck: refused at once, asked again
                await asyncio.sleep(0.05)
        raise AssertionError("the stuck call never returned after the lock went")

    first, second, body = asyncio.run(go())
    locker.join()
    assert first < 2.0
    assert second < 0.4  # refused at once, not after another wait
    assert body is None  # the stuck put ran when the lock went, and was not committed
    db.dispose()
