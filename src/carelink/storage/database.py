"""The database: SQLite by default, PostgreSQL for shared deployments.

One ``Database`` per process, made from a URL in ``create_app`` or the CLI,
never at import time. Schema changes are numbered migrations applied in
order and recorded in ``schema_version``, one process at a time (a lock), so
``carelink db upgrade`` and any number of starting gateway processes are safe
together.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from carelink.errors import ConfigError, StorageUnavailable
from carelink.storage.audit_blocks import index_all
from carelink.storage.feed_tables import create_feed_tables
from carelink.storage.tables import (
    CLAIM_LENGTH,
    audit_events,
    audit_index_blocks,
    audit_lock,
    audit_patient_index,
    break_glass,
    client_assertions,
    consent_versions,
    consents,
    export_jobs,
    links,
    metadata,
    opt_outs,
    person_successors,
    persons,
    record_fields,
    resource_locations,
    result_sets,
)

T = TypeVar("T")

#: the longest the event loop waits for one hot read (see ``storage.hot``)
HOT_LIMIT = 1.0


def _audit_tables(conn: Connection) -> None:
    audit_events.create(conn, checkfirst=True)
    audit_lock.create(conn, checkfirst=True)
    if conn.execute(sa.select(sa.func.count()).select_from(audit_lock)).scalar_one() == 0:
        conn.execute(audit_lock.insert().values(id=1, appends=0))


def _audit_every_column(conn: Connection) -> None:
    """The requesting user as a column, and the hash over every column (chain 2).

    Rows already stored keep their chain-1 hashes (over sequence, previous hash
    and event): rewriting them would launder whatever was done to them before.
    Their ``agent`` stays empty (``AuditEvent?agent=`` does not find them).
    """
    if not sa.inspect(conn).has_table("audit_events"):
        _audit_tables(conn)  # a database whose earlier migrations were applied elsewhere
    have = {c["name"] for c in sa.inspect(conn).get_columns("audit_events")}
    if "agent" not in have:
        conn.execute(sa.text("ALTER TABLE audit_events ADD COLUMN agent VARCHAR(200)"))
    if "chain" not in have:
        conn.execute(
            sa.text("ALTER TABLE audit_events ADD COLUMN chain INTEGER NOT NULL DEFAULT 1")
        )
    for index in audit_events.indexes:
        index.create(conn, checkfirst=True)


def _consent_tables(conn: Connection) -> None:
    consents.create(conn, checkfirst=True)
    break_glass.create(conn, checkfirst=True)


def _export_tables(conn: Connection) -> None:
    opt_outs.create(conn, checkfirst=True)
    export_jobs.create(conn, checkfirst=True)


def _identities_and_history(conn: Connection) -> None:
    """Break-glass grants and reviews bound to full identities; Consent history; export
    jobs bound to the full identity (longer ``client``)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("break_glass")}
    for name, length in (("kind", 20), ("actor", 1000), ("person", 1000)):
        if name not in have:
            conn.execute(sa.text(f"ALTER TABLE break_glass ADD COLUMN {name} VARCHAR({length})"))
    if "reviewer_identity" not in have:
        conn.execute(sa.text("ALTER TABLE break_glass ADD COLUMN reviewer_identity VARCHAR(1000)"))
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("break_glass")}
    if "ix_break_glass_actor" not in indexes:
        conn.execute(sa.text("CREATE INDEX ix_break_glass_actor ON break_glass (actor)"))
    consent_versions.create(conn, checkfirst=True)
    # What was stored before history existed becomes its first known version.
    conn.execute(
        consent_versions.insert().from_select(
            ["id", "version", "patient_id", "status", "last_updated", "body"],
            sa.select(
                consents.c.id,
                consents.c.version,
                consents.c.patient_id,
                consents.c.status,
                consents.c.last_updated,
                consents.c.body,
            ).where(
                ~sa.exists().where(
                    consent_versions.c.id == consents.c.id,
                    consent_versions.c.version == consents.c.version,
                )
            ),
        )
    )
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ALTER TABLE export_jobs ALTER COLUMN client TYPE VARCHAR(1000)"))


def _linkage_tables(conn: Connection) -> None:
    """Filled by the next build (an index built before has none: the first incremental
    update fills ``record_fields`` from the links, see ``federation.changes``)."""
    record_fields.create(conn, checkfirst=True)
    person_successors.create(conn, checkfirst=True)


def _search_indexes(conn: Connection) -> None:
    if not sa.inspect(conn).has_table("person_links"):
        return  # a database whose index tables are made elsewhere
    # only these: after a SQLite build the older indexes carry the build's names
    new = ("ix_persons_birth_family", "ix_persons_family_birth", "ix_person_links_local_id")
    for index in [*persons.indexes, *links.indexes]:
        if index.name in new:
            index.create(conn, checkfirst=True)


def _name_date_given(conn: Connection) -> None:
    """Drop the persons indexes on ``family_folded`` alone and on ``birth_date`` alone,
    whatever their names (a SQLite build names them with its token): the name-and-date
    indexes of migration 12 begin with each column, so what read one of them reads
    those, and every build and update writes two indexes fewer. ``(family_folded,
    birth_date)`` gains ``given_folded``: a search over a range of dates then tests the
    given name in the index and fetches only the rows that match it."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("persons"):
        return
    old = (["family_folded"], ["birth_date"], ["family_folded", "birth_date"])
    for found in inspector.get_indexes("persons"):
        if found["column_names"] in old and not found["unique"]:
            # a name from the database's own catalogue, quoted
            conn.execute(sa.text(f'DROP INDEX "{found["name"]}"'))
    for index in persons.indexes:
        if index.name == "ix_persons_family_birth":
            index.create(conn, checkfirst=True)


def _audit_patient_once(conn: Connection) -> None:
    """Drop the audit trail's index on ``patient_id`` alone: ``(patient_id, seq)`` begins
    with it and serves every search by patient, and each audit commit, on the request
    path, wrote a page of both."""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_audit_events_patient_id"))


def _audit_patient_blocks(conn: Connection) -> None:
    """The audit trail's patient index as derived data in sorted blocks
    (``storage.audit_blocks``): every event stored so far becomes one block, read in
    order through the old index, which is then dropped (each append wrote one random
    leaf of it per event)."""
    if not sa.inspect(conn).has_table("audit_events"):
        _audit_tables(conn)  # a database whose earlier migrations were applied elsewhere
    audit_patient_index.create(conn, checkfirst=True)
    audit_index_blocks.create(conn, checkfirst=True)
    index_all(conn)
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_audit_events_patient_seq"))
    if conn.dialect.name == "postgresql":
        # a search scans the rows after the last block by key: with no statistics of
        # the trail yet, PostgreSQL guesses a third of it and reads all of it instead
        conn.execute(sa.text("ANALYZE audit_events, audit_patient_index, audit_index_blocks"))


def _identities_whole(conn: Connection) -> None:
    """Break-glass grants and export jobs hold every claim a verified token can carry
    (``tables.CLAIM_LENGTH``) and full identities as text: a clinician whose
    organisation claim was over 20 characters could not break glass on PostgreSQL, and
    an identity over 1,000 characters could neither break glass nor export. The index
    on the grant's identity goes: a grant is found by its patient, and an identity of
    long multi-byte claims is over PostgreSQL's limit for one index entry. (SQLite holds
    any length already.)"""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_break_glass_actor"))
    if conn.dialect.name != "postgresql":
        return
    inspector = sa.inspect(conn)  # a table earlier migrations left to others is made whole
    if inspector.has_table("break_glass"):
        conn.execute(
            sa.text(
                f"ALTER TABLE break_glass ALTER COLUMN organisation TYPE varchar({CLAIM_LENGTH}), "
                f"ALTER COLUMN role TYPE varchar({CLAIM_LENGTH}), "
                "ALTER COLUMN actor TYPE text, ALTER COLUMN person TYPE text, "
                "ALTER COLUMN reviewer_identity TYPE text"
            )
        )
    if inspector.has_table("export_jobs"):
        conn.execute(sa.text("ALTER TABLE export_jobs ALTER COLUMN client TYPE text"))


#: (number, what it does, the change) — append only
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "patient index tables", lambda conn: metadata.create_all(conn)),
    (
        2,
        "client assertion replay table",
        lambda conn: client_assertions.create(conn, checkfirst=True),
    ),
    (3, "audit trail", _audit_tables),
    (4, "consents and break-glass grants", _consent_tables),
    (5, "opt-outs and export jobs", _export_tables),
    (6, "result sets for paging", lambda conn: result_sets.create(conn, checkfirst=True)),
    (
        7,
        "resource locations",
        lambda conn: resource_locations.create(conn, checkfirst=True),
    ),
    (8, "full identities on grants and jobs; consent history", _identities_and_history),
    (9, "audit trail: agent column, hash over every column", _audit_every_column),
    (10, "HL7 v2 feed messages and the people they are about", create_feed_tables),
    (11, "linked records' linking fields; retired person ids' successors", _linkage_tables),
    (12, "name-and-date and local-id indexes for Patient search", _search_indexes),
    (
        13,
        "persons: no index on the surname or the birth date alone; surname, date and given",
        _name_date_given,
    ),
    (14, "audit trail: no index on the patient alone", _audit_patient_once),
    (15, "audit trail: the patient index written in sorted blocks", _audit_patient_blocks),
    (16, "break-glass grants, export jobs: every claim and identity held whole", _identities_whole),
]


def normalise_url(url: str) -> str:
    """Accept a plain path for SQLite and ``postgresql://`` for psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: What a database that is down, unreachable, frozen or busy raises, from SQLAlchemy
#: and from the drivers' own connections (the hot paths use raw DBAPI connections).
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    sqlite3.OperationalError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    StorageUnavailable,
)

#: the key of the PostgreSQL advisory lock that serialises migrations ("carelink")
MIGRATION_LOCK = 0x6361_7265_6C69_6E6B


#: SQLite reports a broken schema as an OperationalError too: that is a fault of ours
#: (a 500), not a database that cannot be reached for now (a 503)
SQLITE_SCHEMA_FAULTS = ("no such table", "no such column", "has no column", "syntax error")


def _schema_fault(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    return isinstance(orig, sqlite3.OperationalError) and str(orig).startswith(SQLITE_SCHEMA_FAULTS)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot be used right now
    (not when it says our schema or SQL is wrong)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if _schema_fault(seen):
            return False
        if isinstance(seen, UNAVAILABLE):
            return True
        if isinstance(seen, sa.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(exc: BaseException) -> str:
    """One line saying why the database failed (the driver's first line, no traceback)."""
    if isinstance(exc, StorageUnavailable):
        return str(exc)
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines else type(orig).__name__


class Database:
    """A SQLAlchemy engine, the migrations that shape its schema, and a small pool of
    threads that bounds how long the event loop can wait for the database.

    Every connection is bounded in time: ``connect_timeout`` to connect (and to wait
    for a pooled connection), ``statement_timeout`` per statement (PostgreSQL's
    ``statement_timeout``; SQLite's busy timeout), and ``bounded`` waits at most that
    long for an answer, so a frozen database costs a request a 503, never the server.
    A broken connection is found before use (``pool_pre_ping``) and replaced, so
    the gateway recovers on its own when the database is back.
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
        self._stuck: tuple[Future[Any], float] | None = None
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
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy}
            if where and where != ":memory:":
                # a thread waiting for a pooled connection waits no longer than for a new one
                kwargs["pool_timeout"] = connect_timeout
        else:
            kwargs.update(
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                pool_timeout=connect_timeout,
                # libpq takes whole seconds, and treats less than 2 as 2
                connect_args={"connect_timeout": max(2, math.ceil(connect_timeout))},
            )
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as exc:
            raise ConfigError(f"database URL {self.shown}: {describe(exc)}") from None
        if backend == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        elif statement_timeout is not None:
            millis = max(1, round(statement_timeout * 1000))
            sa.event.listen(self.engine, "connect", _statement_timeout(millis))

    @property
    def threads(self) -> int:
        """How many threads ``run`` and ``bounded`` hand calls to."""
        return self._threads

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded default."""
        return self.url.startswith("sqlite")

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
        call returns (the database is back) or a few timeouts have passed. Async code
        awaits ``run`` instead, which does not hold the loop at all.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args)
        future, wait = self._start(fn, args, limit)
        try:
            result = future.result(timeout=wait)
        except FutureTimeout:
            raise self._stuck_on(future, wait) from None
        self._stuck = None
        return result

    async def run(
        self, fn: Callable[..., T], *args: Any, limit: float | None = None, inline: bool = False
    ) -> T:
        """``fn(*args)`` on one of this database's threads, awaited for at most ``limit``
        seconds (default: the statement timeout): the event loop goes on serving other
        requests meanwhile. Past the limit, ``StorageUnavailable`` (a 503), and while that
        call is still stuck the next ones fail at once, as in ``bounded``.

        ``inline``: call ``fn`` right here instead, for the few indexed reads on SQLite
        whose thread hand-off would cost more than the read (see ``storage.hot``).
        """
        if inline:
            return fn(*args)
        future, wait = self._start(fn, args, limit)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except TimeoutError:
            raise self._stuck_on(future, wait) from None
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

    def dispose(self) -> None:
        """Close every pooled connection and stop the threads (a call still stuck on a
        frozen database is left to finish on its own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.engine.dispose()


def _statement_timeout(millis: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"SET statement_timeout = {int(millis)}")
        cursor.close()
        dbapi_conn.commit()

    return on_connect


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
