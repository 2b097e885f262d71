"""One long-lived autocommit DBAPI connection per thread for reads on the request path.

The request path pays for every microsecond: a pooled SQLAlchemy connection
costs more than the indexed read itself (on PostgreSQL the pool's ping before
each checkout alone cost half as much CPU as a search's read). Each read sees
the latest committed data (autocommit), so a change made by another process is
seen at once. On PostgreSQL each kept connection has one cursor, kept with it,
which reads rows in binary (a Patient's bytea as its bytes, not hex text).

A connection is kept by at most ``kept`` threads at a time (by default the
database's own threads, which make every read of a gateway on PostgreSQL); a
read on any further thread (a benchmark's or a test's clients) checks a
connection out of the pool for that one read and gives it back, so any number
of threads can read without exhausting the pool. A thread that has ended gives
its slot to the next that asks.

On PostgreSQL a kept connection plans each statement once, for any values
(``plan_cache_mode = force_generic_plan``; the driver prepares a statement on its
fifth use). These reads are fixed statements whose values never change the best
way to read them: a key, a name and a date, through an index that the statement
itself bounds. Left to choose, PostgreSQL planned a search by a range of dates
again for every call, its estimate for the range being poor: 0.4 ms of the
backend's CPU a search, where the reading itself took 0.05-0.1 ms.

A kept connection is not pinged before use. When a read fails because the
connection itself was lost (the database restarted, the server ended the
backend), the connection is dropped and the read made once more on a new one,
which the pool pings before handing it out; any other failure (a statement
timeout, an error in the statement) is raised at once, never run twice. On
SQLite, whose driver does not say that a connection is lost, any failure is
tried once more.

Where the read runs depends on the database. PostgreSQL is across a network
that can stall: the request path awaits these reads on one of the database's
threads for at most ``HOT_LIMIT`` (``Database.looked_up``), and a read made on the
event loop all the same is waited for at most that (``Database.bounded``). SQLite is a
local file in WAL mode, where a reader never waits for a writer: the read runs
on the calling thread, as handing it to another thread and back costs several
times the read itself (measured on the lookup: 18% of the event loop's time
was that wait). Its busy timeout is ``HOT_LIMIT`` too, so even a locked file
(a WAL being recovered) holds the loop no longer than a stuck server would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from carelink.storage.database import HOT_LIMIT, Database

__all__ = ["HOT_LIMIT", "HotConnection"]

#: a slot taken by a thread whose connection is still being made
_CONNECTING = object()


class HotConnection:
    """Fixed-SQL reads on one long-lived connection per thread (for ``kept`` threads)."""

    def __init__(self, db: Database, kept: int | None = None) -> None:
        self.db = db
        self.mark = "?" if db.is_sqlite else "%s"
        self.kept = db.threads if kept is None else kept
        self._local = threading.local()
        self._owners: dict[threading.Thread, Any] = {}  # thread -> its pooled connection
        self._lock = threading.Lock()

    def query(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with bound ``values``, waited for at most ``HOT_LIMIT`` seconds:
        these indexed reads take well under a millisecond, so one that takes a second
        means the database is stuck, not busy. On SQLite the read runs right here (see
        the module's docstring); otherwise on one of the database's threads
        (``Database.bounded``)."""
        if self.db.is_sqlite:
            return self.read(sql, values)
        return self.db.bounded(self.read, sql, values, limit=HOT_LIMIT)

    def read(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with bound ``values``, read on this thread, bounded only by the
        statement timeout: for reads already on one of the database's threads (a search,
        which may take longer than ``HOT_LIMIT``)."""
        for attempt in (1, 2):
            driver = getattr(self._local, "driver", None)
            if driver is None:
                driver = self._connect()
                if driver is None:  # every slot is taken by another live thread
                    return self.once(sql, values)
            try:
                if self.db.is_sqlite:
                    return self._rows(driver, sql, values)
                return self._fetch(self._local.cursor, sql, values)
            except Exception:
                lost = self.db.is_sqlite or driver.closed or driver.broken
                self._drop()
                if attempt == 2 or not lost:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def once(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on a connection checked out of the pool for this one read and
        given back as it was (on PostgreSQL the read is made in autocommit mode: no
        ``BEGIN`` before it, nothing to roll back after)."""
        conn = self.db.engine.raw_connection()
        driver: Any = conn.driver_connection  # open: a pooled connection always has one
        reading = not self.db.is_sqlite
        try:
            if reading:
                driver.autocommit = True
            return self._rows(driver, sql, values)
        finally:
            if reading:
                with suppress(Exception):  # broken: the pool drops it when it is given back
                    driver.autocommit = False
            conn.close()

    def _rows(self, driver: Any, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self.db.is_sqlite:  # the driver's own statement cache, no cursor object kept
            return list(driver.execute(sql, values).fetchall())
        cur = _reader(driver)
        try:
            return self._fetch(cur, sql, values)
        finally:
            cur.close()

    @staticmethod
    def _fetch(cur: Any, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur.execute(sql, values)
        return list(cur.fetchall())

    def _connect(self) -> Any:
        """This thread's new connection (pooled, so it can be invalidated when it breaks),
        and the driver's own connection inside it, which the reads use directly; None
        when ``kept`` live threads hold one already."""
        me = threading.current_thread()
        with self._lock:
            if len(self._owners) >= self.kept:
                # a thread still connecting is alive
                for t in [t for t in self._owners if not t.is_alive()]:
                    with suppress(Exception):  # already broken: nothing to give back
                        self._owners[t].invalidate()
                    del self._owners[t]
            if len(self._owners) >= self.kept:
                return None
            self._owners[me] = _CONNECTING
        conn = None
        try:
            conn = self.db.engine.raw_connection()
            driver: Any = conn.driver_connection  # open: a pooled connection always has one
            if self.db.is_sqlite:
                driver.isolation_level = None
                driver.execute(f"PRAGMA busy_timeout={int(HOT_LIMIT * 1000)}")
            else:
                driver.autocommit = True
                # one plan a statement, made once: see the module's docstring
                driver.execute("SET plan_cache_mode = force_generic_plan")
                # the thread's one cursor, kept with its connection: a new cursor a read
                # (its adapters' map, its state) cost a fifth of the driver's CPU of a
                # search by name and date; it holds the last read's rows until the next
                self._local.cursor = _reader(driver)
        except BaseException:
            if conn is not None:  # set up only in part: not given back to the pool as is
                with suppress(Exception):
                    conn.invalidate()
            with self._lock:
                self._owners.pop(me, None)
            raise
        with self._lock:
            self._owners[me] = conn
        self._local.driver = driver
        return driver

    def _drop(self) -> None:
        """Invalidate this thread's connection (the pool makes a new one next time)."""
        self._local.driver = self._local.cursor = None
        with self._lock:
            conn = self._owners.pop(threading.current_thread(), None)
        if conn is not None and conn is not _CONNECTING:
            with suppress(Exception):
                conn.invalidate()

    def close(self) -> None:
        """Close every thread's connection. None goes back to the pool: each runs
        without the driver's transactions (autocommit), and a connection handed out like
        that would commit a transaction's statements one by one."""
        with self._lock:
            conns, self._owners = list(self._owners.values()), {}
        for conn in conns:
            if conn is _CONNECTING:
                continue
            with suppress(Exception):  # already broken: nothing to release
                conn.invalidate()
        self._local = threading.local()


def _reader(driver: Any) -> Any:
    """A cursor reading rows in binary: a bytea (each Patient, each consent) comes as its
    bytes, not as hex text the server writes and the driver decodes (half the driver's
    CPU for a search returning 141 people); every other column loads to the same type."""
    return driver.cursor(binary=True)
