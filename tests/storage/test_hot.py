"""Hot reads: on the event loop they see every committed change at once, and a SQLite
read, which runs on the loop's own thread, waits for a lock at most ``HOT_LIMIT``."""

from __future__ import annotations

import asyncio
import threading

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
