"""Attack: PostgreSQL connections lost without a word (nothing closed, nothing answered).

The guarantee: **no wait for the database lasts for ever.** A pooled connection lost
silently is found at its next checkout within the statement timeout and a second, and
replaced together with every pooled connection made before it; a kept hot-read
connection likewise. Through a TCP proxy the test controls (``TcpProxy.lose``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from carelink.audit import verify
from carelink.errors import StorageUnavailable
from carelink.storage import Database
from carelink.storage.answers import MARGIN, NoAnswer
from carelink.storage.audit_store import AuditStore
from carelink.storage.hot import HotConnection
from carelink.storage.index_linking import applying_key
from carelink.storage.index_store import IndexStore
from tests.adversarial.test_audit_cut import BATCH, _batch
from tests.support.tcp_proxy import proxy_to, with_host

pytestmark = pytest.mark.postgres

TIMEOUT = 1.0


def _pids(db: Database, n: int) -> list[int]:
    """The backends of ``n`` pooled connections checked out at once, then given back."""
    conns = [db.engine.connect() for _ in range(n)]
    try:
        return [c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() for c in conns]
    finally:
        for c in conns:
            c.close()


def test_pooled_connections_lost_without_a_word_cost_one_bounded_wait(postgres_url):
    target = urlsplit(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=TIMEOUT)
        try:
            before = _pids(db, 3)  # three connections idle in the pool
            proxy.lose()  # each of them lost for good
            proxy.resume()  # new connections reach the database
            start = time.monotonic()
            after = _pids(db, 3)
            took = time.monotonic() - start
        finally:
            db.dispose()
    assert not set(after) & set(before), "a lost connection was handed out again"
    # one ping waited for in vain, then the pool's older connections replaced unpinged
    assert took < TIMEOUT + MARGIN + 2.0, f"three checkouts took {took:.1f} s"


def test_a_kept_read_connection_lost_without_a_word_ends_in_no_answer_then_reconnects(
    postgres_url,
):
    target = urlsplit(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=TIMEOUT)
        hot = HotConnection(db, kept=1)
        try:
            first = hot.read("SELECT pg_backend_pid()", [])[0][0]
            proxy.lose()
            proxy.resume()
            start = time.monotonic()
            with pytest.raises(NoAnswer):
                hot.read("SELECT pg_backend_pid()", [])
            took = time.monotonic() - start
            again = hot.read("SELECT pg_backend_pid()", [])[0][0]
        finally:
            hot.close()
            db.dispose()
    assert took < TIMEOUT + MARGIN + 1.0, f"the lost read ended after {took:.1f} s"
    assert again != first


def test_keepalives_are_on_unless_the_url_says_otherwise(postgres_url):
    db = Database(postgres_url)
    own = Database(f"{postgres_url}&keepalives_idle=7")
    try:
        with db.engine.connect() as conn:
            params = conn.connection.driver_connection.info.get_parameters()
        with own.engine.connect() as conn:
            theirs = conn.connection.driver_connection.info.get_parameters()
    finally:
        db.dispose()
        own.dispose()
    assert params.get("keepalives") == "1"
    assert params.get("keepalives_idle") == "30"
    assert params.get("tcp_user_timeout") == "60000"
    assert theirs.get("keepalives_idle") == "7"


def test_a_statement_whose_answer_never_comes_ends_within_the_bound(postgres_url):
    """The connection passed its ping; its statement reaches the database, but the answer
    is lost. The statement ends within the bound (SQLAlchemy told the connection is lost:
    it replaces it) and the next connection works."""
    target = urlsplit(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=TIMEOUT)
        try:
            with db.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                proxy.lose(requests=False)
                start = time.monotonic()
                with pytest.raises(sa.exc.OperationalError) as lost:
                    conn.execute(sa.text("SELECT pg_backend_pid()"))
                took = time.monotonic() - start
            proxy.resume()
            with db.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 2")).scalar_one() == 2
        finally:
            db.dispose()
    assert lost.value.connection_invalidated
    assert took < TIMEOUT + MARGIN + 1.0, f"the statement ended after {took:.1f} s"


def test_a_source_s_turn_is_waited_for_past_the_bound(postgres_url):
    """Applying a source's changes waits for the other process's turn however long it
    takes (``IndexStore.applying``): the bound on each wait is not for that one."""
    db = Database(postgres_url, statement_timeout=TIMEOUT)
    db.migrate()
    other = Database(postgres_url)
    try:
        with other.engine.connect() as holder, holder.begin():
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": applying_key("gp")})
            got: list[float] = []

            def turn() -> None:
                start = time.monotonic()
                with IndexStore(db).applying("gp"):
                    got.append(time.monotonic() - start)

            waiting = threading.Thread(target=turn)
            waiting.start()
            time.sleep(TIMEOUT + MARGIN + 1.0)  # longer than any bounded wait
            assert waiting.is_alive()
        waiting.join(10)  # the other's turn ended: this one's begins
        assert got, "the turn was not taken once the other's ended"
        assert got[0] > TIMEOUT + MARGIN
    finally:
        db.dispose()
        other.dispose()


#: seconds a statement of the audit trail's block is held on the server (a trigger's
#: sleep, within the statement timeout), so its connection can be lost meanwhile
HELD = 0.5
#: where a block's connection is lost, as the trigger that holds it there (its kind, its
#: table, when it fires): while the server copies the block's rows (their transaction
#: never commits), or while it commits them (the block stored, the answer lost)
HOLDS = {
    "copying": ("TRIGGER", "audit_patient_index", "FOR EACH STATEMENT"),
    "committing": (
        "CONSTRAINT TRIGGER",
        "audit_index_blocks",
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
    ),
}


def _held_now(db: Database) -> int:
    """Statements held by a ``HOLDS`` trigger now (a transaction of its own each time: a
    transaction sees one snapshot of ``pg_stat_activity``)."""
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event = 'PgSleep'"
                )
            ).scalar_one()
        )


def _index_blocks(db: Database) -> list[tuple[int, int]]:
    """The patient index's blocks, as (first seq, last seq)."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT first_seq, block FROM audit_index_blocks"))
        return sorted((int(a), int(b)) for a, b in rows)


@pytest.mark.parametrize("where", HOLDS)
def test_a_block_whose_connection_is_lost_while_it_is_written_is_written_once(postgres_url, where):
    """``AuditStore.settle`` writes the trail's patient index block; its connection is
    lost without a word while the server copies the block's rows, or commits them. The
    settle raises within the statement timeout and its margin; the block is there whole
    or not at all; once the database can be reached again the next settle leaves it
    written once; the index agrees with the rows and the chain verifies."""
    direct = Database(postgres_url)  # past the proxy
    direct.migrate()
    reader = AuditStore(direct)
    kind, table, fires = HOLDS[where]
    with direct.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({HELD}); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(f"CREATE {kind} held AFTER INSERT ON {table} {fires} EXECUTE FUNCTION held()")
        )
    target = urlsplit(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=TIMEOUT)
        store = AuditStore(db)
        store.block = 2 * BATCH
        try:
            for n in (1, 2):
                store.append_rows(_batch(n))
            outcome: list[int | BaseException] = []

            def settle() -> None:
                try:
                    outcome.append(store.settle())
                except Exception as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=settle, daemon=True)
            started = time.monotonic()
            worker.start()
            while not _held_now(direct):
                assert time.monotonic() - started < 10, "the block was never written"
                time.sleep(0.01)
            proxy.lose()
            worker.join(TIMEOUT + MARGIN + 5)
            took = time.monotonic() - started
            assert not worker.is_alive(), "the settle still waits for an answer that never comes"
            assert len(outcome) == 1
            assert isinstance(outcome[0], NoAnswer), f"the settle ended in {outcome[0]!r}"
            assert took < TIMEOUT + MARGIN + 1.0, f"the settle gave up after {took:.1f} s"
            with direct.engine.begin() as conn:  # once the lost transaction has let go
                conn.execute(sa.text(f"DROP TRIGGER held ON {table}"))
            cut = _index_blocks(direct)
            assert cut in ([], [(1, 2 * BATCH)]), f"a block half written: {cut}"
            assert bool(cut) == (where == "committing")  # lost where it was meant to be
            assert reader.index_problems() == []
            proxy.resume()
            assert store.settle() == (0 if cut else 2 * BATCH)
        finally:
            store.close()
            db.dispose()
    try:
        assert _index_blocks(direct) == [(1, 2 * BATCH)]
        assert reader.index_problems() == []
        assert verify(list(reader.rows())) == []
    finally:
        reader.close()
        direct.dispose()


@pytest.mark.parametrize("how", ["run", "bounded"])
def test_a_write_its_caller_gave_up_on_commits_nothing_once_the_database_answers(postgres_url, how):
    """A write handed to a database thread (``Database.run``, or ``bounded`` on the event
    loop) is given up on while the database is frozen: its caller gets
    ``StorageUnavailable`` (the request a 503, to be tried again). When the database
    answers again, the statements the thread had sent arrive and run, but the write must
    not be committed: it would then be made twice."""
    direct = Database(postgres_url)  # past the proxy
    with direct.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE given_up (n int)"))
    target = urlsplit(postgres_url)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=TIMEOUT)

        def write() -> None:
            with db.engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO given_up VALUES (1)"))

        async def given_up() -> None:
            if how == "run":
                await db.run(write)
            else:
                db.bounded(write)

        try:
            write()  # a pooled connection made, and one row
            proxy.freeze()
            try:
                with pytest.raises(StorageUnavailable):
                    asyncio.run(given_up())
            finally:
                proxy.resume()  # within the thread's own bound: its statements arrive now
            time.sleep(TIMEOUT + MARGIN + 1.0)
            write()  # and the database takes writes again
        finally:
            db.dispose()
    try:
        with direct.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM given_up")).scalar_one()
    finally:
        direct.dispose()
    assert rows == 2, f"{rows - 2} write(s) answered as not made were made after all"
