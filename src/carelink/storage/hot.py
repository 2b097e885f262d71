"""One long-lived autocommit DBAPI connection per thread for reads on the request path.

The request path pays for every microsecond: a pooled SQLAlchemy connection
costs more than the indexed read itself (on PostgreSQL the pool's ping before
each checkout alone cost half as much CPU as a search's read). Each read sees
the latest committed data (autocommit), so a change made by another process is
seen at once. On PostgreSQL rows are read in binary (a Patient's bytea as its
bytes, not hex text), and a kept connection runs each statement as one it has
prepared by name (``_Prepared``).

A connection is kept by at most ``kept`` threads at a time (by default the
database's own threads, which make every read of a gateway on PostgreSQL); a
read on any further thread (a benchmark's or a test's clients) checks a
connection out of the pool for that one read and gives it back, so any number
of threads can read without exhausting the pool. A thread that has ended gives
its slot to the next that asks.

On PostgreSQL a kept connection plans each statement once, for any values
(``plan_cache_mode = force_generic_plan``; each statement is prepared on its
first use, ``_Prepared``). These reads are fixed statements whose values never change the best
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

import re
import threading
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import psycopg
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from psycopg.pq import ConnStatus, ExecStatus

from carelink.storage.answers import NoAnswer, answer_limit, results
from carelink.storage.database import HOT_LIMIT, Database

__all__ = ["HOT_LIMIT", "HotConnection"]

#: a slot taken by a thread whose connection is still being made
_CONNECTING = object()
TUPLES_OK, COMMAND_OK, BAD = ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK, ConnStatus.BAD


class HotConnection:
    """Fixed-SQL reads on one long-lived connection per thread (for ``kept`` threads)."""

    def __init__(self, db: Database, kept: int | None = None) -> None:
        self.db = db
        self.mark = "?" if db.is_sqlite else "%s"
        self.kept = db.threads if kept is None else kept
        self._local = threading.local()
        self._owners: dict[threading.Thread, Any] = {}  # thread -> its pooled connection
        self._lock = threading.Lock()
        db.keeps(self)

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
            if driver is not None and self._local.losses != self.db.losses:
                self._drop()  # made before a connection was found lost: lost too, likely
                driver = None
            if driver is None:
                driver = self._connect()
                if driver is None:  # every slot is taken by another live thread
                    return self.once(sql, values)
            try:
                if self.db.is_sqlite:
                    return self._rows(driver, sql, values)
                reader: _Prepared = self._local.reader
                return reader.rows(sql, values)
            except NoAnswer:
                # lost without a word: so, likely, is every connection made before it,
                # kept here or idle in the pool (whose ping would wait for good too)
                self._drop()
                self.db.lost()
                raise
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
                self._local.reader = _Prepared(driver, answer_limit(self.db.wait))
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
        self._local.losses = self.db.losses
        return driver

    def _drop(self) -> None:
        """Invalidate this thread's connection (the pool makes a new one next time)."""
        self._local.driver = self._local.reader = None
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


#: a statement's placeholders, as the stores write them (``%s`` only, never ``%%``)
_MARK = re.compile(r"%s")
#: a kept connection's prepared statements, at most: then its own are deallocated
_PREPARED_MAX = 200


class _Prepared:
    """A kept PostgreSQL connection's reads, each by a statement prepared on it by name.

    The driver's cursor, for every read, converts the query, counts its uses before
    preparing it, dumps each value by its Python type and waits through generators: in
    the gateway's process about 10 us of a search by name and date's 25 us of driver
    CPU. Here the statement is prepared on its first use (its parameters' types are
    PostgreSQL's to infer, as for the text values the driver sends), its values go as
    text and its rows come back in binary, loaded by the driver's own loaders (the same
    Python values as the cursor's). Values other than text, whole numbers and None (a
    consent grant's instant, a float, is one), and text that libpq cannot take as a
    parameter (a NUL byte, a lone surrogate), go through the cursor instead, which
    refuses or converts them as it always has. The server's errors are the driver's own
    exceptions (a statement timeout is ``QueryCanceled``); a connection lost is
    ``OperationalError``, as the cursor says it, so the read is made once more on a new
    connection. Each answer is waited for at most ``limit`` seconds (``storage.answers``:
    libpq's own waits never end on a connection lost without a word); past that it is
    ``NoAnswer``, and the connection is dropped."""

    def __init__(self, driver: Any, limit: float | None = None) -> None:
        self.limit = limit
        self.pgconn = driver.pgconn
        self.encoding = driver.info.encoding
        self.transformer = Transformer(driver)
        self.names: dict[str, bytes] = {}
        # the fallback, kept with its connection: a new cursor a read (its adapters' map,
        # its state) cost a fifth of the driver's CPU of a search by name and date
        self.cursor = _reader(driver)

    def rows(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        params = _as_text(values, self.encoding)
        if params is None or "%%" in sql:
            return HotConnection._fetch(self.cursor, sql, values)
        name = self.names.get(sql) or self._prepare(sql)
        self.pgconn.send_query_prepared(name, params, None, 1)
        result = self._answer()
        if result.status != TUPLES_OK:
            raise self._error(result)
        self.transformer.set_pgresult(result)
        return self.transformer.load_rows(0, result.ntuples, tuple)

    def _prepare(self, sql: str) -> bytes:
        if len(self.names) >= _PREPARED_MAX:  # a bounded number of shapes a connection
            # ours only, in one round trip: the cursor's own prepared statements stay
            ours = b"".join(b"DEALLOCATE %s;" % n for n in self.names.values())
            self.names.clear()
            self.pgconn.send_query(ours)
            for done in results(self.pgconn, self.limit):
                self._check(done, COMMAND_OK)
        name = f"carelink_{len(self.names)}".encode()
        numbered = iter(range(1, sql.count("%s") + 1))
        text = _MARK.sub(lambda _: f"${next(numbered)}", sql)
        self.pgconn.send_prepare(name, text.encode(self.encoding), None)
        self._check(self._answer(), COMMAND_OK)
        self.names[sql] = name
        return name

    def _answer(self) -> Any:
        """The one result of the statement sent, within ``limit`` (``NoAnswer``)."""
        got = results(self.pgconn, self.limit)
        if not got:  # nothing came before the end: the connection went
            raise psycopg.OperationalError("the connection was lost")
        return got[-1]

    def _check(self, result: Any, wanted: Any) -> None:
        if result.status != wanted:
            raise self._error(result)

    def _error(self, result: Any) -> Exception:
        if self.pgconn.status == BAD:  # the connection itself was lost
            message = result.get_error_message(self.encoding) or "the connection was lost"
            return psycopg.OperationalError(message)
        return error_from_result(result, self.encoding)


def _as_text(values: Sequence[Any], encoding: str) -> list[bytes | None] | None:
    """Each value as the text PostgreSQL reads it (None: NULL), or None when one is not
    text or a whole number, or cannot go to libpq as text (the cursor reads those)."""
    out: list[bytes | None] = []
    for v in values:
        kind = type(v)
        if kind is str:
            if "\x00" in v:
                return None
            try:
                out.append(v.encode(encoding))
            except UnicodeEncodeError:
                return None
        elif kind is int:
            out.append(str(v).encode())
        elif v is None:
            out.append(None)
        else:
            return None
    return out
