"""No connection goes back to the pool changed by whoever borrowed it.

Invariant: after the audit store, the hot read path or an index build (finished or
failed) let their connections go, every connection the pool hands out runs the driver's
transactions (statements of a transaction commit together or not at all), checks foreign
keys on SQLite, and waits for the disk at commit on PostgreSQL. Before, each of the three
gave its connection back in autocommit (and the build, on PostgreSQL, without
``synchronous_commit``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from carelink.storage import Database
from carelink.storage.audit_store import AuditStore, NewEvent
from carelink.storage.hot import HotConnection
from carelink.storage.index_build import IndexBuild
from tests.support.people import person_row


def _audit(db: Database) -> None:
    store = AuditStore(db)
    store.append([NewEvent("2026-12-01T10:00:00.000000Z", "p1", "0", "dr", b"{}")])
    store.close()
    assert len(list(store.rows())) == 1  # a streamed read needs a transaction


def _hot(db: Database) -> None:
    hot = HotConnection(db, kept=2)
    assert hot.read("SELECT 1", ()) == [(1,)]
    hot.close()


def _built(db: Database) -> None:
    build = IndexBuild(db)
    try:
        build.load("persons", [person_row("p1")])
        build.swap()
    finally:
        build.close()


def _failed_build(db: Database) -> None:
    build = IndexBuild(db)
    try:
        build.load("persons", [person_row("p1")])
    finally:
        build.close()


@pytest.mark.parametrize("borrow", [_audit, _hot, _built, _failed_build])
def test_the_pool_hands_out_connections_as_it_made_them(
    borrow: Callable[[Database], None], database_url: str
) -> None:
    db = Database(database_url)
    db.migrate()
    borrow(db)
    raws = [db.engine.raw_connection() for _ in range(3)]
    try:
        for raw in raws:
            driver = raw.driver_connection
            if db.is_sqlite:
                assert driver.isolation_level is not None
                assert driver.execute("PRAGMA foreign_keys").fetchone() == (1,)
            else:
                assert driver.autocommit is False
                cur = driver.cursor()
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone() == ("on",)
                driver.rollback()
    finally:
        for raw in raws:
            raw.close()
    with db.engine.connect() as conn:  # a transaction rolled back leaves nothing behind
        trans = conn.begin()
        conn.execute(sa.text("INSERT INTO index_settings (key, value) VALUES ('k', 'v')"))
        trans.rollback()
        assert conn.execute(sa.text("SELECT count(*) FROM index_settings")).scalar_one() == 0
    db.dispose()


def test_dispose_closes_the_connections_stores_keep_out_of_the_pool(database_url, tmp_path):
    """A hot read and an audit append each keep a connection checked out of the pool;
    ``Database.dispose`` closes those too, not only the pooled ones (the suite's process had
    reached 1,024 descriptors from stores disposed but never closed: a socket, or a SQLite
    file and its journal, each)."""
    if database_url.startswith("postgresql"):
        # this test's own connections, told apart from any other process's on the server
        tag = f"hygiene-{uuid.uuid4().hex[:12]}"
        database_url += ("&" if "?" in database_url else "?") + f"application_name={tag}"
        watcher = Database(database_url.replace(tag, f"{tag}-watcher"))

        def held() -> int:
            with watcher.engine.connect() as conn:
                return int(
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (tag,),
                    ).scalar_one()
                )
    else:
        path = sa.engine.make_url(Database(database_url).url).database

        def held() -> int:
            fds = os.listdir("/proc/self/fd")
            return sum(1 for fd in fds if _target(fd).startswith(str(path)))

    before = held()
    db = Database(database_url)
    db.migrate()
    hot = HotConnection(db)
    assert hot.read("SELECT 1", []) == [(1,)]
    store = AuditStore(db)
    store.append([NewEvent("2026-12-01T10:00:00.000000Z", "p1", "0", "dr", b"{}")])
    assert held() > before
    db.dispose()
    deadline = time.monotonic() + 5  # a backend ends a moment after its client closes
    while held() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held() == before
    if database_url.startswith("postgresql"):
        watcher.dispose()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
