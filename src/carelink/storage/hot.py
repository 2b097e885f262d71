"""One long-lived autocommit DBAPI connection for reads on the request path.

The request path pays for every microsecond: a pooled SQLAlchemy connection
costs more than the indexed read itself. Each read sees the latest committed
data (autocommit), so a change made by another process is seen at once. A
broken connection is dropped and the read tried once more on a new one.

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
from typing import Any

from carelink.storage.database import HOT_LIMIT, Database

__all__ = ["HOT_LIMIT", "HotConnection"]


class HotConnection:
    """Fixed-SQL reads on one long-lived connection per thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.mark = "?" if db.is_sqlite else "%s"
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    @property
    def _conn(self) -> Any:
        return getattr(self._local, "conn", None)

    @_conn.setter
    def _conn(self, conn: Any) -> None:
        with self._lock:
            old = getattr(self._local, "conn", None)
            if old is not None and old in self._all:
                self._all.remove(old)
            if conn is not None:
                self._all.append(conn)
        self._local.conn = conn

    def query(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with bound ``values``, waited for at most ``HOT_LIMIT`` seconds:
        these indexed reads take well under a millisecond, so one that takes a second
        means the database is stuck, not busy. On SQLite the read runs right here (see
        the module's docstring); otherwise on one of the database's threads
        (``Database.bounded``)."""
        if self.db.is_sqlite:
            return self._query(sql, values)
        return self.db.bounded(self._query, sql, values, limit=HOT_LIMIT)

    def _query(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        local = self._local
        for attempt in (1, 2):
            driver = getattr(local, "driver", None)
            try:
                if driver is None:
                    driver = self._connect()
                if self.db.is_sqlite:  # the driver's own statement cache, no cursor object kept
                    return list(driver.execute(sql, values).fetchall())
                cur = driver.cursor()
                try:
                    cur.execute(sql, values)
                    return list(cur.fetchall())
                finally:
                    cur.close()
            except Exception:
                if self._conn is not None:
                    self._conn.invalidate()
                    self._conn = None
                local.driver = None
                if attempt == 2:
                    raise
        return []  # pragma: no cover - the loop returns or raises

    def _connect(self) -> Any:
        """This thread's new connection (pooled, so it can be invalidated when it breaks),
        and the driver's own connection inside it, which the reads use directly."""
        self._conn = self.db.engine.raw_connection()
        driver = self._conn.driver_connection
        if self.db.is_sqlite:
            driver.isolation_level = None
            driver.execute(f"PRAGMA busy_timeout={int(HOT_LIMIT * 1000)}")
        else:
            driver.autocommit = True
        self._local.driver = driver
        return driver

    def close(self) -> None:
        """Release every thread's connection."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: S112 - a connection already broken needs no closing
                continue
        self._local = threading.local()
