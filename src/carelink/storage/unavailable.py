"""Which database errors mean "cannot be used right now" (a 503 and a retry), and the
one line that says why; a broken schema or SQL of ours is not among them (a 500)."""

from __future__ import annotations

import sqlite3

import psycopg
import sqlalchemy as sa

from carelink.errors import StorageUnavailable

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


#: SQLite reports a broken schema or statement as an OperationalError too: that is a
#: fault of ours (a 500), not a database that cannot be reached for now (a 503); found
#: anywhere in the message (a syntax error reads 'near "X": syntax error')
SQLITE_SCHEMA_FAULTS = (
    "no such table",
    "no such column",
    "no such function",
    "has no column",
    "syntax error",
    "incomplete input",
    "unrecognized token",
    "ambiguous column",
    "too many",
)

#: PostgreSQL's classes of error that psycopg raises as OperationalError but that say
#: our statement, or what it was given, is at fault, not the database: 54, a program
#: limit exceeded (an index row too big, too many columns ...)
POSTGRESQL_OUR_FAULTS = ("54",)


def _schema_fault(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig)
        return any(fault in text for fault in SQLITE_SCHEMA_FAULTS)
    state = getattr(orig, "sqlstate", None)
    return (
        isinstance(orig, psycopg.Error) and bool(state) and str(state)[:2] in POSTGRESQL_OUR_FAULTS
    )


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


def as_unavailable(exc: Exception) -> StorageUnavailable | None:
    """The ``StorageUnavailable`` (saying why, in one line) that a database call raising
    ``exc`` raises in its place when ``exc`` says the database cannot be used right now
    and is not one already; None for any other error (raised as it is).

    Every caller of ``Database.run``, ``looked_up`` and ``bounded`` then has one error to
    catch for "the database is away", whichever driver, pool or connection found it
    (psycopg's, sqlite3's, SQLAlchemy's): a caller that caught only ``StorageUnavailable``
    had let a driver's error through, and a 503 became a 500.
    """
    if isinstance(exc, StorageUnavailable) or not is_unavailable(exc):
        return None
    return StorageUnavailable(describe(exc))
