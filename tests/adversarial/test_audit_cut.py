"""Attack: the database connection cut while the audit trail is being appended to.

On PostgreSQL an append is written in one flush (``BEGIN``, the append lock, the chained
insert and ``COMMIT`` on libpq's pipeline) and its results read once, so a connection can
die with any part of a batch sent, or with all of it run and no answer back. The
guarantee: **an append either returns, and then every event of its batch
is stored once, or raises; a batch is never stored in part, never twice; the chain
verifies whatever moment the cut came; and the store appends again once the database is
back.** (A batch whose ``COMMIT`` was sent when the cut came may have been stored without
the append returning: the request failed closed all the same, and the event is kept
once, never written a second time.)

The database is taken away through a TCP proxy the test controls (every connection cut;
new ones refused for up to 50 ms, or, every other time, taken at once, so that a retry
would reach the database), at random moments while a thread appends batches of the size a
year-range search writes.
"""

from __future__ import annotations

import random
import threading
import time
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa

from carelink.audit import Access, Who, verify
from carelink.audit.events import RequestEvents, Row
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore, Shared
from tests.support.tcp_proxy import proxy_to, with_host

#: events a batch: about what one year-range search returns at the full range
BATCH = 13


def _batch(n: int) -> list[Row]:
    """A search's events as the request path makes them: one a person, stored in part (what
    they share once, ``storage.audit_store``, "Shared parts"), so a cut can come between
    the shared part and the rows naming it."""
    recorded = f"2026-01-01T00:00:00.{n:06d}Z"
    access = Access("search-type", "/fhir/Patient?family=x", f"req-{n}", recorded, "b")
    ids = iter(f"ev-{n}-{i}" for i in range(BATCH))
    made = RequestEvents(access, Who("dr-1", "R8000", "RXX01", "TREAT", "iss"), "0")
    rows = made.rows([f"p-{n}-{i}" for i in range(BATCH)], lambda: next(ids))
    assert all(isinstance(r[4], Shared) for r in rows)
    return rows


def test_a_cut_mid_append_leaves_whole_batches_a_verifying_chain_and_a_store_that_goes_on(
    postgres_url,
):
    direct = Database(postgres_url)
    direct.migrate()
    target = urlsplit(postgres_url)
    returned: list[int] = []  # batches whose append returned
    raised: list[int] = []  # batches whose append raised
    done = threading.Event()
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port))
        store = AuditStore(db)

        def append() -> None:
            n = 0
            while not done.is_set():
                n += 1
                try:
                    store.append_rows(_batch(n))
                    returned.append(n)
                except Exception:  # the cut: this batch failed closed
                    raised.append(n)
                    time.sleep(0.005)

        worker = threading.Thread(target=append, daemon=True)
        worker.start()
        rng = random.Random(20261202)
        try:
            for cut in range(16):
                time.sleep(rng.uniform(0.02, 0.15))
                proxy.kill()
                # every other cut a blip: the connections cut, new ones taken at once
                # (a retry would reach the database); the rest an outage of up to 50 ms
                time.sleep(0 if cut % 2 else rng.uniform(0.01, 0.05))
                proxy.resume()
            time.sleep(0.3)  # back for good: appends must succeed again
            settled = len(returned)
            time.sleep(0.5)
        finally:
            done.set()
            worker.join(30)
        assert not worker.is_alive()
        assert raised, "no cut came mid-append: the attack did not happen"
        assert len(returned) > settled, "the store did not append again once the database was back"
        store.close()
        db.dispose()

    reader = AuditStore(direct)
    whole_batches(reader, set(returned), set(raised))
    reader.close()
    direct.dispose()


def test_an_append_whose_answer_never_comes_is_stored_once_and_the_store_goes_on(postgres_url):
    """The whole append reaches the database and its ``COMMIT`` runs, but the connection
    is then lost without a word (nothing closed, nothing more delivered, either way). The
    append must end within the statement timeout and its margin, raising (the requests
    fail closed), never send the batch again, and append the next batch on a new
    connection, chained after the one the database did store."""
    direct = Database(postgres_url)
    direct.migrate()
    target = urlsplit(postgres_url)
    timeout = 1.0
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        db = Database(with_host(postgres_url, "127.0.0.1", proxy.port), statement_timeout=timeout)
        store = AuditStore(db)
        store.append_rows(_batch(1))  # the connection made, the statement prepared
        with direct.engine.connect() as conn:
            before = conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
        outcome: list[BaseException | None] = []

        def append() -> None:
            try:
                store.append_rows(_batch(2))
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)

        # from here on the database hears this connection but is never heard back
        proxy.lose(requests=False)
        worker = threading.Thread(target=append, daemon=True)
        started = time.monotonic()
        worker.start()
        deadline = time.monotonic() + 10
        stored = before
        while stored < before + BATCH and time.monotonic() < deadline:
            time.sleep(0.02)
            with direct.engine.connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
        assert stored == before + BATCH, "the append did not reach the database"
        proxy.resume()  # new connections go through; the lost one stays lost
        worker.join(timeout + 5)
        took = time.monotonic() - started
        assert not worker.is_alive(), "the append still waits for an answer that never comes"
        assert len(outcome) == 1
        assert outcome[0] is not None, "an append without an answer returned"
        assert took < timeout + 3, f"the append gave up after {took:.1f} s"
        store.append_rows(_batch(3))
        store.close()
        db.dispose()
    reader = AuditStore(direct)
    whole_batches(reader, {1, 3}, {2})
    reader.close()
    direct.dispose()


def whole_batches(store: AuditStore, returned: set[int], raised: set[int]) -> None:
    """The trail (of ``_batch`` batches) verifies; every batch whose append returned is
    stored whole; every batch stored is whole, once, in order, and was appended (a raised
    batch may be whole: its commit was under way); and every event was stored in part,
    its shared part there (a part lost would have failed ``verify``)."""
    rows = list(store.rows())
    assert verify(rows) == []
    with store.db.engine.connect() as conn:
        whole = conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE part IS NULL"))
        assert whole.scalar_one() == 0
    stored: dict[int, list[int]] = {}
    for row in rows:
        event = orjson.loads(row.event)
        n, i = (int(x) for x in event["id"].split("-")[1:])
        stored.setdefault(n, []).append(i)
    for n in returned:
        assert stored.get(n) == list(range(BATCH)), f"batch {n} returned but is not stored whole"
    for n, kept in stored.items():
        assert kept == list(range(BATCH)), f"batch {n} stored as {kept}"
    assert set(stored) <= returned | raised
