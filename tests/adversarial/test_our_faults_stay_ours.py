"""Attack: an error of our own SQL, or of what it was given, stays an error (a 500), never
a "database away" 503 that clients retry for ever (``storage.unavailable``, which
``Database.run``, ``looked_up`` and ``bounded`` apply to every error)."""

from __future__ import annotations

import asyncio
import sqlite3

import psycopg
import pytest
import sqlalchemy as sa

from carelink.errors import StorageUnavailable
from carelink.storage import Database
from carelink.storage.unavailable import is_unavailable


def _sqlite_error(sql: str, *params: object) -> sqlite3.OperationalError:
    try:
        sqlite3.connect(":memory:").execute(sql, params)
    except sqlite3.OperationalError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELEC 1", ()),  # 'near "SELEC": syntax error': never starts with "syntax error"
        ("SELECT 1 FROM", ()),  # 'incomplete input'
        ("SELECT nosuchfn(1)", ()),  # 'no such function: nosuchfn'
        ("SELECT " + ",".join("?" * 40000), tuple(range(40000))),  # too many SQL variables
    ],
)
def test_our_own_bad_sql_on_sqlite_is_not_unavailable(sql, params):
    exc = _sqlite_error(sql, *params)
    assert not is_unavailable(exc), f"{exc!r} taken for a database that is away"


def test_database_run_raises_a_syntax_error_as_itself_not_a_503(tmp_path):
    db = Database(str(tmp_path / "c.db"))
    try:

        def bad() -> object:
            with db.engine.connect() as conn:
                return conn.execute(sa.text("SELEC 1")).all()

        with pytest.raises(sa.exc.OperationalError) as caught:
            asyncio.run(db.run(bad))
        assert not isinstance(caught.value, StorageUnavailable), caught.value
    finally:
        db.dispose()


def test_a_program_limit_error_of_postgresql_is_not_unavailable():
    """54000 program_limit_exceeded (an index row too big for a btree, a statement too
    complex): psycopg makes it an OperationalError; it is caused by what was stored or
    asked, and retrying never succeeds: a 500/400, not a 503."""
    assert issubclass(psycopg.errors.ProgramLimitExceeded, psycopg.OperationalError)
    exc = psycopg.errors.ProgramLimitExceeded(
        "index row size 3000 exceeds btree version 4 maximum 2704"
    )
    assert not is_unavailable(exc)
