"""Attack: a database cut off in every way we can make, met by every way a caller reaches it.

The guarantee: **whatever says the database cannot be used right now reaches the caller
of ``Database.run``, ``looked_up`` or ``bounded`` as ``StorageUnavailable``** (a 503
and a retry), never as a driver's or the pool's own error: callers catch that one error
(the audit safety net's person lookup caught only it, and a cut connection's psycopg
``OperationalError``, or SQLAlchemy's "This connection is closed" after two failed
pings, turned a 503 into a 500).

The cuts are real: PostgreSQL's backends terminated (``pg_terminate_backend``, as a
restarting or failing-over server does) right after each connection is made, or the
path to the server cut through a TCP proxy the test controls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from carelink.errors import StorageUnavailable
from carelink.storage import Database, IndexStore
from carelink.storage.hot import HotConnection
from tests.support.tcp_proxy import TcpProxy, proxy_to, with_host

pytestmark = pytest.mark.postgres

TIMEOUT = 1.0


def _select(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT 1")).scalar_one())


def _hot(hot: HotConnection) -> int:
    return int(hot.read("SELECT 1", [])[0][0])


def _person(index: IndexStore) -> object:
    """What the audit safety net asks of a patient a request named."""
    return index.person("nobody") or index.link_by_patient_id("nobody")


#: how a caller reaches the database: each of ``Database``'s ways in
WAYS = ("run", "looked_up", "bounded on the loop", "bounded off the loop")


def _call(db: Database, way: str, fn: Callable[..., Any], *args: Any) -> Any:
    if way == "bounded off the loop":
        return db.bounded(fn, *args)

    async def on_loop() -> Any:
        if way == "run":
            return await db.run(fn, *args)
        if way == "looked_up":
            return await db.looked_up(fn, *args)
        return db.bounded(fn, *args)

    return asyncio.run(on_loop())


@contextmanager
def _terminating(db: Database, admin: Database) -> Iterator[None]:
    """Every connection ``db`` makes from now on is terminated by the server right after
    it is made (and set up): its first use meets a closed connection."""

    def terminate(dbapi_conn: Any, _record: Any) -> None:
        pid = dbapi_conn.info.backend_pid
        with admin.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})

    sa.event.listen(db.engine, "connect", terminate)
    try:
        yield
    finally:
        sa.event.remove(db.engine, "connect", terminate)


def _terminate_all(db: Database, admin: Database) -> None:
    """The server ends every connection ``db`` holds now (each pooled one, each kept one)."""
    del db  # known to the server by its application name
    with admin.engine.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = :a"
            ),
            {"a": APP},
        )


APP = "carelink-cut-test"

#: the reads made: a plain pooled connection, the lookup path's kept connection, a store
READS = ("engine", "hot", "person")

#: the cuts: every connection held terminated by the server, and each new one right after
#: it is made; the proxy killed (held connections cut, new ones refused); held
#: connections cut and each new one closed by the proxy the moment it is accepted
CUTS = ("terminated", "proxy killed", "proxy closes new")


@pytest.fixture
def base(postgres_url: str) -> Iterator[tuple[str, Database]]:
    url = f"{postgres_url}&application_name={APP}"
    admin = Database(postgres_url)
    setup = Database(url)
    setup.migrate()
    setup.dispose()
    yield url, admin
    admin.dispose()


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("way", WAYS)
def test_a_cut_database_is_storage_unavailable_to_every_caller(base, cut, read, way):
    url, admin = base
    proxied = cut.startswith("proxy")
    target = urlsplit(url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db_url = with_host(url, "127.0.0.1", proxy.port) if proxied else url
        db = Database(db_url, statement_timeout=TIMEOUT, connect_timeout=2.0)
        hot = HotConnection(db, kept=1)
        index = IndexStore(db)
        fn, arg = {"engine": (_select, db), "hot": (_hot, hot), "person": (_person, index)}[read]
        try:
            _call(db, way, fn, arg)  # warm: a pooled connection, a kept one, both good
            with _cut(cut, db, admin, proxy), pytest.raises(StorageUnavailable):
                _call(db, way, fn, arg)
            # and once the database is reachable again, the same call is answered
            for _ in range(3):
                try:
                    _call(db, way, fn, arg)
                    break
                except StorageUnavailable:
                    continue
            else:
                pytest.fail("the database was back, and the call still failed")
        finally:
            hot.close()
            index.close()
            db.dispose()


@contextmanager
def _cut(cut: str, db: Database, admin: Database, proxy: TcpProxy) -> Iterator[None]:
    if cut == "proxy killed":
        proxy.kill()
        try:
            yield
        finally:
            proxy.resume()
        return
    if cut == "proxy closes new":
        proxy.kill()  # the connections held now are cut
        proxy.resume()
        proxy.allow(0)  # and each new one is closed as it is accepted
        try:
            yield
        finally:
            proxy.allow(None)
        return
    _terminate_all(db, admin)
    with _terminating(db, admin):
        yield
