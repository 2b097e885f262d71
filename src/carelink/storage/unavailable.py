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
