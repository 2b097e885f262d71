"""The database: SQLite by default, PostgreSQL for shared deployments.

One ``Database`` per process, made from a URL in ``create_app`` or the CLI,
never at import time. Schema changes are numbered migrations
(``storage.migrations``) applied in order and recorded in ``schema_version``, one
process at a time (a lock), so ``carelink db upgrade`` and any number of starting
gateway processes are safe together. Which errors mean the database is unavailable
is ``storage.unavailable``'s.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from psycopg.pq import ExecStatus
from sqlalchemy.engine import Connection, Engine

from carelink.errors import ConfigError, StorageUnavailable
from carelink.storage.answers import NoAnswer, answer_limit, bounded_connection, results
from carelink.storage.migrations import MIGRATIONS
from carelink.storage.unavailable import as_unavailable, describe, is_unavailable

T = TypeVar("T")

EMPTY_QUERY = ExecStatus.EMPTY_QUERY

#: the longest the event loop waits for one hot read (see ``storage.hot``)
HOT_LIMIT = 1.0


def normalise_url(url: str) -> str:
    """Accept a plain path for SQLite and ``postgresql://`` for psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: the key of the PostgreSQL advisory lock that serialises migrations ("carelink")
MIGRATION_LOCK = 0x6361_7265_6C69_6E6B


class Database:
    """A SQLAlchemy engine, the migrations that shape its schema, and a small pool of
    threads that bounds how long the event loop can wait for the database.

    Every connection is bounded in time: ``connect_timeout`` to connect (and to wait
    for a pooled connection), ``statement_timeout`` per statement (PostgreSQL's
    ``statement_timeout``; SQLite's busy timeout), and ``bounded`` waits at most that
    long for an answer, so a frozen database costs a request a 503, never the server.
    A broken connection is found before use and replaced, so the gateway recovers on
    its own when the database is back. On PostgreSQL that check is a ping whose answer
    is waited for at most the statement timeout and a second (``_bounded_ping``): a
    connection lost without a word (nothing closed, nothing answered) fails it, and
    every pooled connection made before it is replaced too; and TCP keepalives
    (``KEEPALIVES``) end a connection whose path has died while a statement waits on
    it, where libpq would wait for ever.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = None,
        threads: int = 8,
    ) -> None:
        self.url = normalise_url(url)
        self._sqlite = self.url.startswith("sqlite")  # asked several times a read
        try:
            parsed = sa.engine.make_url(self.url)
        except (sa.exc.ArgumentError, ValueError):
            shown = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
            raise ConfigError(f"database URL {shown!r} is not a path or a URL") from None
        self.shown = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"database URL {self.shown}: {backend!r} is not supported "
                "(a file path for SQLite, or postgresql://)"
            )
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.wait = statement_timeout if statement_timeout is not None else 30.0
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        #: what holds connections of its own out of the pool (a store's long-lived ones,
        #: ``keeps``): closed by ``dispose``, which closes only the pooled ones itself
        self._holders: weakref.WeakSet[Any] = weakref.WeakSet()
        self._stuck: tuple[Future[Any], float] | None = None
        #: how many times a connection was found lost without a word (``lost``): a
        #: connection kept out of the pool made before the last time is not used again
        self.losses = 0
        #: how many migrations the last ``migrate`` applied (0: the schema was current)
        self.applied = 0
        kwargs: dict[str, object] = {}
        if backend == "sqlite":
            where = parsed.database
            if where and where != ":memory:" and not Path(where).parent.is_dir():
                raise ConfigError(
                    f"database {where}: the folder {Path(where).parent} does not exist "
                    "(carelink init makes it)"
                )
            busy = statement_timeout if statement_timeout is not None else 30.0
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": busy,
                "factory": _GuardedSqlite,
            }
            if where and where != ":memory:":
                # a thread waiting for a pooled connection waits no longer than for a new one
                kwargs["pool_timeout"] = connect_timeout
        else:
            # libpq takes whole seconds, and treats less than 2 as 2; keepalives unless
            # the URL sets its own
            connect: dict[str, object] = {"connect_timeout": max(2, math.ceil(connect_timeout))}
            connect.update({k: v for k, v in KEEPALIVES.items() if k not in parsed.query})
            kwargs.update(
                pool_size=10,
                max_overflow=20,
                pool_timeout=connect_timeout,
                connect_args=connect,
            )
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise ConfigError(f"database URL {self.shown}: {describe(exc)}") from None
        if backend == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            limit = answer_limit(self.wait)
            ping = _bounded_ping(limit, self._count_loss)
            sa.event.listen(self.engine, "connect", _made)
            sa.event.listen(self.engine, "checkout", ping)
            # every statement's wait bounded too, not only the ping's: a connection lost
            # between its ping and its statement had held a database thread for good
            made = bounded_connection(
                answer_limit(statement_timeout), self._count_loss, _unless_given_up
            )

            def bounded(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
                return made.connect(*cargs, **cparams)

            sa.event.listen(self.engine, "do_connect", bounded)
        if backend != "sqlite" and statement_timeout is not None:
            millis = max(1, round(statement_timeout * 1000))
            sa.event.listen(self.engine, "connect", _statement_timeout(millis))

    @property
    def threads(self) -> int:
        """How many threads ``run`` and ``bounded`` hand calls to."""
        return self._threads

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded default."""
        return self._sqlite

    def check(self) -> None:
        """Connect once; ``StorageUnavailable`` naming the database and why if that fails."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            if is_unavailable(exc):
                raise StorageUnavailable(f"database {self.shown}: {describe(exc)}") from None
            raise

    def bounded(self, fn: Callable[..., T], *args: Any, limit: float | None = None) -> T:
        """``fn(*args)`` for synchronous code that may run on an event loop.

        Off the loop (a worker thread, the CLI) it is simply called. On the loop it
        runs on one of this database's threads and is waited for at most ``limit``
        seconds (default: the statement timeout). The loop still waits for it, but
        bounded: when a call timed out and is still stuck, the next ones fail at once
        (``StorageUnavailable``) instead of each holding the loop again, until the stuck
        call returns (the database is back) or a few timeouts have passed; the call
        given up on commits nothing from then on (``_unless_given_up``). Async code
        awaits ``run`` instead, which does not hold the loop at all.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _said(fn, args)
        mark = _Wait()
        future: Future[T]
        future, wait = self._start(_marked, (mark, fn, args), limit)
        try:
            result = future.result(timeout=wait)
        except FutureTimeout:
            mark.given_up = True
            raise self._stuck_on(future, wait) from None
        except Exception as exc:
            if (said := as_unavailable(exc)) is not None:
                raise said from exc
            raise
        self._stuck = None
        return result

    async def run(
        self, fn: Callable[..., T], *args: Any, limit: float | None = None, inline: bool = False
    ) -> T:
        """``fn(*args)`` on one of this database's threads, awaited for at most ``limit``
        seconds (default: the statement timeout): the event loop goes on serving other
        requests meanwhile. Past the limit, ``StorageUnavailable`` (a 503), and while that
        call is still stuck the next ones fail at once, as in ``bounded``; the call goes
        on, but commits nothing from then on (``_unless_given_up``).

        ``inline``: call ``fn`` right here instead, for the few indexed reads on SQLite
        whose thread hand-off would cost more than the read (see ``storage.hot``).
        """
        if inline:
            return _said(fn, args)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        mark = _Wait()
        future, wait = self._start(_answering, (loop, answer, fn, args, mark), limit)
        timer = loop.call_later(wait, _too_late, answer, mark)
        try:
            result = await answer
        except _TooLate:
            future.cancel()  # still queued behind busy threads: it never runs, late
            raise self._stuck_on(future, wait) from None
        except asyncio.CancelledError:
            future.cancel()  # not started yet: it never runs
            raise
        except Exception as exc:
            if (said := as_unavailable(exc)) is not None:
                raise said from exc
            raise
        finally:
            timer.cancel()
        self._stuck = None
        return result

    async def looked_up(
        self, fn: Callable[..., T], *args: Any, limit: float | None = HOT_LIMIT
    ) -> T:
        """``fn(*args)`` made of the lookup path's indexed reads (the index, consents,
        resource locations): on SQLite right here, as handing them to a thread costs more
        than the reads (``storage.hot``); otherwise ``run`` within ``limit`` seconds
        (``None``: the statement timeout)."""
        return await self.run(fn, *args, limit=limit, inline=self.is_sqlite)

    def _start(
        self, fn: Callable[..., T], args: tuple[Any, ...], limit: float | None
    ) -> tuple[Future[T], float]:
        """``fn(*args)`` submitted to the database's threads, and how long to wait for it;
        ``StorageUnavailable`` at once while an earlier call is stuck (for a few waits)."""
        stuck = self._stuck
        recent = stuck is not None and time.monotonic() - stuck[1] < 5 * self.wait
        if stuck is not None and recent and not stuck[0].done():
            raise StorageUnavailable("the database is not answering")
        wait = self.wait if limit is None else min(limit, self.wait)
        return self._executor().submit(fn, *args), wait

    def _stuck_on(self, future: Future[Any], wait: float) -> StorageUnavailable:
        self._stuck = (future, time.monotonic())
        return StorageUnavailable(f"the database did not answer within {wait:g} s")

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="database")
        return self._pool

    def migrate(self) -> int:
        """Apply every migration not yet applied; return the schema version.

        Serialised across processes (a PostgreSQL advisory lock; SQLite's write lock
        taken up front with ``BEGIN IMMEDIATE``), so any number of processes may start
        at once on an empty database: the first migrates, the others then find it done.
        """
        try:
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    try:
                        version = self._apply(conn)
                    except BaseException:
                        conn.exec_driver_sql("ROLLBACK")
                        raise
                    conn.exec_driver_sql("COMMIT")
                    return version
                refuse_old_server(conn.dialect.server_version_info)
                with conn.begin():
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                    return self._apply(conn)
        except Exception as exc:
            if is_unavailable(exc) and not isinstance(exc, StorageUnavailable):
                raise StorageUnavailable(f"database {self.shown}: {describe(exc)}") from None
            raise

    def version(self) -> int:
        """The schema version applied (0 for an empty database)."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            found = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
        return int(found or 0)

    def _apply(self, conn: Connection) -> int:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL)"
            )
        )
        done = {row[0] for row in conn.execute(sa.text("SELECT version FROM schema_version"))}
        self.applied = 0
        for number, description, change in MIGRATIONS:
            if number in done:
                continue
            change(conn)
            self.applied += 1
            conn.execute(
                sa.text("INSERT INTO schema_version (version, description) VALUES (:v, :d)"),
                {"v": number, "d": description},
            )
        return int(max([n for n, _, _ in MIGRATIONS] + list(done)))

    def lost(self) -> None:
        """A connection was lost without a word (``answers.NoAnswer``): so, likely, is
        every connection made before it. The pool's are replaced (its idle ones closed
        now), and the stores that keep connections out of the pool replace theirs at
        their next use (they compare ``losses``)."""
        self._count_loss()
        self.engine.dispose()

    def _count_loss(self) -> None:
        self.losses += 1

    def keeps(self, holder: Any) -> None:
        """Have ``dispose`` call ``holder.close()`` (a store that keeps connections checked
        out of the pool, which the engine's own dispose leaves open: each a socket, or a
        SQLite file with its journal, until the process ends)."""
        self._holders.add(holder)

    def dispose(self) -> None:
        """Close every pooled connection, and those kept out of the pool (``keeps``), and
        stop the threads (a call still stuck on a frozen database is left to finish on
        its own)."""
        for holder in list(self._holders):
            with suppress(Exception):  # already closed, or broken: nothing to release
                holder.close()
        self._holders = weakref.WeakSet()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.engine.dispose()


class _TooLate(Exception):
    """A ``Database.run`` call not answered within its wait (never seen outside ``run``)."""


class _Wait:
    """A call handed to a database thread: whether its caller has stopped waiting for it
    (and answered the request with a 503)."""

    __slots__ = ("given_up",)

    def __init__(self) -> None:
        self.given_up = False


#: the call the current database thread is making (its ``_Wait``), for ``_unless_given_up``
_calls = threading.local()


def _unless_given_up() -> None:
    """Before each commit of a connection (``_GuardedSqlite``, psycopg's through
    ``answers.BoundedConnection``; checked on the driver's connection, not as a
    SQLAlchemy event, which costs every statement of the engine several microseconds):
    refused (``StorageUnavailable``: the transaction is rolled back,
    as the pool does to a connection returned mid-transaction) when the call making it
    was given up on. Its request was answered 503, a write not made, to be tried again:
    made after all once the database answered again, it would be made twice (a Consent
    stored twice, an export run for nobody). A commit already sent when the caller gives
    up may still be made: that one's answer, like any commit's, can always be lost."""
    wait = getattr(_calls, "wait", None)
    if wait is not None and wait.given_up:
        raise StorageUnavailable("the request waiting for this was answered: not committed")


def _too_late(answer: asyncio.Future[Any], mark: _Wait) -> None:
    mark.given_up = True
    if not answer.done():
        answer.set_exception(_TooLate())


class _GuardedSqlite(sqlite3.Connection):
    """SQLite's connection, asking ``_unless_given_up`` before each commit."""

    def commit(self) -> None:
        _unless_given_up()
        super().commit()


def _said(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """``fn(*args)`` here, an error saying the database cannot be used now raised as
    ``StorageUnavailable`` (``unavailable.as_unavailable``)."""
    try:
        return fn(*args)
    except Exception as exc:
        if (said := as_unavailable(exc)) is not None:
            raise said from exc
        raise


def _marked(mark: _Wait, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """``fn(*args)`` on a database thread, as the call ``mark`` stands for."""
    _calls.wait = mark
    try:
        return fn(*args)
    finally:
        _calls.wait = None


def _answering(
    loop: asyncio.AbstractEventLoop,
    answer: asyncio.Future[T],
    fn: Callable[..., T],
    args: tuple[Any, ...],
    mark: _Wait,
) -> None:
    """``fn(*args)`` on a database thread, as the call ``mark`` stands for, its result or
    exception handed to ``answer`` on the loop: one ``call_soon_threadsafe``, where
    ``asyncio.wrap_future`` and ``wait_for`` chained two futures, a callback each way and
    a waiter task (half the CPU of the hop from the loop to a thread and back)."""
    try:
        result = _marked(mark, fn, args)
    except BaseException as exc:  # every outcome goes back to the awaiting call
        _hand_back(loop, answer, None, exc)
    else:
        _hand_back(loop, answer, result, None)


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    answer: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    with suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(_settle, answer, result, exc)


def _settle(answer: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if answer.done():  # timed out or cancelled meanwhile
        return
    if exc is None:
        answer.set_result(result)
    else:
        answer.set_exception(exc)


def _statement_timeout(millis: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"SET statement_timeout = {int(millis)}")
        cursor.close()
        dbapi_conn.commit()

    return on_connect


#: libpq's TCP keepalives on every PostgreSQL connection: a connection idle 30 s is
#: probed every 10 s and dropped after 3 probes unanswered, and data unacknowledged for
#: 60 s ends it (``tcp_user_timeout``, in milliseconds): a network path that died is
#: then an error within about a minute, not a wait for ever (a database URL's own
#: values are kept)
KEEPALIVES: dict[str, object] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


#: in a pooled connection's ``info`` while it has not yet been checked out since it was made
UNUSED = "carelink.unused"


def _made(_dbapi_conn: Any, record: Any) -> None:
    """A connection just made is not pinged at its first checkout: it has just answered
    (its connection, its settings), as SQLAlchemy's own pre-ping skips a fresh one. Had
    it been, the pool's retry after a failed ping, on a new connection through a path
    that had just been cut, would fail its ping too, and the pool give up with an
    ``InvalidRequestError`` ("This connection is closed") that says nothing of the
    database being away (a 500, not a 503): a new connection's first failure is now the
    driver's own error."""
    record.info[UNUSED] = True


def _bounded_ping(limit: float | None, lost: Callable[[], None]) -> Callable[[Any, Any, Any], None]:
    """The pool's check of a PostgreSQL connection before each use: an empty query whose
    answer is waited for at most ``limit`` seconds (SQLAlchemy's own ping waits as long
    as libpq does, for ever on a connection lost without a word). A connection that
    fails it is replaced, with every pooled connection made before it
    (``InvalidatePoolError``: they are lost too, likely), and the pool tries again;
    ``lost()`` tells the connections kept out of the pool."""

    def on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop(UNUSED, False):
            return  # just made, and answered as it was (``_made``)
        pg = dbapi_conn.pgconn
        try:
            pg.send_query(b"")
            answered = results(pg, limit)
        except NoAnswer as exc:
            lost()
            raise sa.exc.InvalidatePoolError("the database did not answer in time") from exc
        except Exception as exc:  # closed, broken: the driver's or libpq's error
            raise sa.exc.DisconnectionError("the connection was lost") from exc
        if [r.status for r in answered] != [EMPTY_QUERY]:
            raise sa.exc.DisconnectionError("the connection's ping was not answered as sent")

    return on_checkout


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # what is deleted is overwritten, not left in free pages: patients' details removed
    # from the index (a rebuild's old tables, ``IndexBuild.clear_gone``) leave no trace in
    # the file, whatever default the platform's SQLite was compiled with
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


#: the oldest PostgreSQL served: the audit append links the trail with its ``sha256``
#: (``storage.audit_store._CHAINED_INSERT``), which PostgreSQL 11 brought
OLDEST_POSTGRESQL = (11,)


def refuse_old_server(version: tuple[int | str, ...] | None) -> None:
    """A ``ConfigError`` for a PostgreSQL server older than ``OLDEST_POSTGRESQL`` (checked
    before anything is migrated: every request's audit would fail on it)."""
    if version and isinstance(version[0], int) and (version[0],) < OLDEST_POSTGRESQL:
        shown = ".".join(str(v) for v in version)
        raise ConfigError(f"PostgreSQL {shown} is too old: carelink needs PostgreSQL 11 or newer")
