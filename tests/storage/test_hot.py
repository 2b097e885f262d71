"""Hot reads: on the event loop they see every committed change at once, and a SQLite
read, which runs on the loop's own thread, waits for a lock at most ``HOT_LIMIT``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from carelink.storage import Database
from carelink.storage.hot import HOT_LIMIT, HotConnection


def _db(tmp_path) -> Database:
    db = Database(str(tmp_path / "hot.db"))
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)"))
    return db


def test_a_change_committed_elsewhere_is_seen_by_the_next_read_on_the_loop(tmp_path):
    db = _db(tmp_path)
    hot = HotConnection(db)

    async def reads() -> list[list[tuple[object, ...]]]:
        seen = [hot.query("SELECT v FROM t WHERE k = ?", ("a",))]
        with db.engine.begin() as conn:  # another connection, as another process would
            conn.execute(sa.text("INSERT INTO t VALUES ('a', 'one')"))
        seen.append(hot.query("SELECT v FROM t WHERE k = ?", ("a",)))
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE t SET v = 'two' WHERE k = 'a'"))
        seen.append(hot.query("SELECT v FROM t WHERE k = ?", ("a",)))
        return seen

    assert asyncio.run(reads()) == [[], [("one",)], [("two",)]]
    hot.close()
    db.dispose()


def test_the_sqlite_hot_connection_waits_for_a_lock_no_longer_than_the_hot_limit(tmp_path):
    db = _db(tmp_path)
    hot = HotConnection(db)
    hot.query("SELECT 1", ())
    (busy,) = hot.query("PRAGMA busy_timeout", ())
    assert busy == (int(HOT_LIMIT * 1000),)
    hot.close()
    db.dispose()


@pytest.mark.postgres
def test_a_read_that_fails_on_a_sound_connection_is_not_made_twice(postgres_url):
    """Only a lost connection is worth a second try: a read that fails for any other
    reason (here a division by zero after the sequence moved on; a statement timeout
    alike) is raised at once, not run again."""
    db = Database(postgres_url)
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE tries"))
    hot = HotConnection(db)
    try:
        with pytest.raises(psycopg.errors.DivisionByZero):
            hot.read("SELECT 1 / (nextval('tries') * 0)", ())
        assert hot.read("SELECT last_value FROM tries", ()) == [(1,)]
    finally:
        hot.close()
        db.dispose()


@pytest.mark.postgres
def test_a_thread_that_has_ended_gives_its_kept_connection_to_the_next(postgres_url):
    """Connections are kept for at most ``kept`` threads; once one of those threads has
    ended, the next thread that reads keeps the connection instead (it is not held for
    the dead thread until the store closes)."""
    db = Database(postgres_url)
    hot = HotConnection(db, kept=1)
    done: list[bool] = []

    def reader() -> None:
        hot.read("SELECT 1", ())
        done.append(True)

    try:
        for _ in range(2):
            t = threading.Thread(target=reader)
            t.start()
            t.join(10)
            assert db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
            assert list(hot._owners) == [t]
    finally:
        hot.close()
        db.dispose()
    assert done == [True, True]


@pytest.fixture
def pg_table(postgres_url):
    """A PostgreSQL database with a table of each kind of column the stores read."""
    db = Database(postgres_url, statement_timeout=0.5)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE kinds (k VARCHAR(20) PRIMARY KEY, body BYTEA, flag BOOLEAN,"
                " n INTEGER, note TEXT, born VARCHAR(10))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO kinds VALUES ('ab', '\\x00ff'::bytea, true, 7, NULL, '1950-03-04'),"
                " ('ab\u00e9\u4e2d', '', false, -1, 'n\u00f6te', NULL),"
                " ('ac', NULL, NULL, NULL, '', '')"
            )
        )
    yield db
    db.dispose()


#: reads of the stores' kinds: text, whole numbers and NULL as values, every column type
READS = [
    ("SELECT k, body, flag, n, note, born FROM kinds ORDER BY k", ()),
    ("SELECT k, body FROM kinds WHERE k > %s AND k < %s ORDER BY k", ("a", "ac")),
    ("SELECT k FROM kinds WHERE k = %s", ("ab\u00e9\u4e2d",)),
    ("SELECT k, n FROM kinds WHERE n > %s ORDER BY k LIMIT %s", (-5, 500)),
    ("SELECT k FROM kinds WHERE note IS NOT DISTINCT FROM %s", (None,)),
    ("SELECT k FROM kinds WHERE born LIKE %s ESCAPE '/' ORDER BY k", ("1950%",)),
    ("SELECT k, flag FROM kinds WHERE flag = %s", (True,)),  # not text: the cursor's
]


@pytest.mark.postgres
def test_a_postgresql_read_gives_what_the_drivers_cursor_gives(pg_table):
    """A kept connection runs each read as a statement it prepared by name; the rows are
    the very values the driver's cursor reads (binary rows), for every column type the
    stores read, and a statement read again gives the same."""
    hot = HotConnection(pg_table)
    conn = pg_table.engine.raw_connection()
    try:
        driver: Any = conn.driver_connection
        cursor = driver.cursor(binary=True)
        for sql, values in READS:
            cursor.execute(sql, values)
            expected = cursor.fetchall()
            assert hot.read(sql, values) == expected, sql
            assert hot.read(sql, values) == expected, sql
        assert hot.read(READS[0][0], ())[0][1] == b"\x00\xff"
    finally:
        conn.close()
        hot.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("value", "error"), [("ab\x00c", psycopg.DataError), ("ab\ud800", UnicodeEncodeError)]
)
def test_text_libpq_cannot_take_is_refused_as_the_cursor_refuses_it(pg_table, value, error):
    """A NUL byte or a lone surrogate in a value: the read raises what the driver's
    cursor raises, never reads the text cut short (libpq ends a parameter at a NUL:
    ``ab\\x00c`` would find ``ab``)."""
    hot = HotConnection(pg_table)
    conn = pg_table.engine.raw_connection()
    sql = "SELECT k FROM kinds WHERE k = %s"
    try:
        driver: Any = conn.driver_connection
        with pytest.raises(error):
            driver.cursor(binary=True).execute(sql, (value,))
        with pytest.raises(error):
            hot.read(sql, (value,))
        assert hot.read(sql, ("ab",)) == [("ab",)]  # the connection serves on
    finally:
        conn.close()
        hot.close()


@pytest.mark.postgres
def test_a_statement_timeout_on_a_prepared_read_is_the_drivers_own_error(pg_table):
    """A read past the statement timeout raises the driver's ``QueryCanceled`` (an
    ``OperationalError``: a 503 upstream), and the next read is answered."""
    hot = HotConnection(pg_table)
    try:
        assert hot.read("SELECT %s::int", (1,)) == [(1,)]
        with pytest.raises(psycopg.errors.QueryCanceled):
            hot.read("SELECT pg_sleep(%s::int)", (2,))
        assert hot.read("SELECT %s::int", (2,)) == [(2,)]
    finally:
        hot.close()


@pytest.mark.postgres
def test_a_kept_connection_reads_right_past_its_bound_of_prepared_statements(pg_table):
    """More statements than a connection keeps prepared (they are deallocated and
    prepared again as used): each read still gives its own rows, and so do reads the
    driver's cursor makes (and prepares) on the same connection meanwhile."""
    hot = HotConnection(pg_table)
    by_cursor = "SELECT k, flag FROM kinds WHERE flag = %s"  # a bool: the cursor's
    try:
        for i in range(450):
            assert hot.read(f"SELECT %s::int + {i % 300}", (1,)) == [(1 + i % 300,)], i
            assert hot.read(by_cursor, (True,)) == [("ab", True)], i
    finally:
        hot.close()
