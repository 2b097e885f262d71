"""Hot reads: on the event loop they see every committed change at once, and a SQLite
read, which runs on the loop's own thread, waits for a lock at most ``HOT_LIMIT``."""

from __future__ import annotations

import asyncio

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
