"""The audit trail's append (``AuditStore.append`` and ``append_rows``, the writer child's):
every row stored as given, chained by ``row_hash`` from the genesis hash, the head and the
patient index's tail read in one statement under the append lock (an empty trail, a trail
whose blocks were written), and both entry points storing the very same rows.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.audit import Access, Who, audit_event, verify, verify_index
from carelink.audit.events import columns
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.answers import ready
from carelink.storage.audit_store import CHAIN, GENESIS, AuditStore, NewEvent, row_hash

#: any text PostgreSQL can hold in a text column (no NUL)
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


def _event(n: int, patient: str | None, agent: str) -> NewEvent:
    recorded = f"2026-01-01T00:00:00.{n:06d}Z"
    access = Access("read", f"/fhir/Patient/{patient}", f"req-{n}", recorded, "b")
    e = audit_event(access, Who(agent, "R8000", "RXX01", "TREAT"), patient, "0")
    return NewEvent(*columns(e), orjson.dumps(e))


def _tuple(e: NewEvent) -> tuple[str, str | None, str, str | None, bytes]:
    return (e.recorded, e.patient_id, e.outcome, e.agent, e.event)


@pytest.fixture
def store(database_url):
    db = Database(database_url)
    db.migrate()
    s = AuditStore(db)
    s.block = 3  # blocks written between appends: the tail is read against a mark
    yield s
    s.close()
    db.dispose()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.one_of(st.none(), _TEXT), _TEXT), min_size=0, max_size=5),
        min_size=1,
        max_size=5,
    )
)
def test_appended_rows_are_stored_as_given_and_chained_by_row_hash(store, batches):
    """Whatever the columns hold (no patient, any text), each stored row is the event and
    columns given, its ``prev_hash`` the row before's (the genesis hash first) and its hash
    ``row_hash`` of its columns; the head returned is the last row's, and the tail counted
    is the events past the last block written."""
    with store.db.engine.begin() as conn:
        for table in ("audit_events", "audit_patient_index", "audit_index_blocks"):
            conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - our own names
    store.tail = None
    given_rows = []
    n = 0
    for batch in batches:
        events = []
        for patient, agent in batch:
            n += 1
            events.append(_event(n, patient, agent))
        # the writer child's tuples and other callers' NewEvents, in turns
        seq, head = (
            store.append_rows([_tuple(e) for e in events]) if n % 2 else store.append(events)
        )
        given_rows += events
        stored = list(store.rows())
        assert (seq, head) == ((stored[-1].seq, stored[-1].hash) if stored else (0, GENESIS))
        with store.db.engine.connect() as conn:
            mark = conn.exec_driver_sql(
                "SELECT coalesce(max(block), 0) FROM audit_index_blocks"
            ).scalar_one()
        assert store.tail == seq - mark
        store.settle()
    stored = list(store.rows())
    assert [r.seq for r in stored] == list(range(1, len(given_rows) + 1))
    prev = GENESIS
    for r, e in zip(stored, given_rows, strict=True):
        assert (r.recorded, r.patient_id, r.outcome, r.agent, r.event) == _tuple(e)
        assert r.chain == CHAIN
        assert r.prev_hash == prev
        assert r.hash == row_hash(
            prev, r.seq, e.recorded, e.patient_id, e.outcome, e.agent, e.event
        )
        prev = r.hash
    assert verify(stored) == []
    assert verify_index(store) == []


def test_append_and_append_rows_store_the_same_rows(tmp_path):
    """The same events through ``append`` (NewEvents) and ``append_rows`` (tuples) make
    two identical trails, row for row and byte for byte."""
    events = [_event(i, f"p{i % 3}" if i % 4 else None, f"u{i % 2}") for i in range(1, 12)]
    trails = []
    for name, add in (("a", "append"), ("b", "append_rows")):
        db = Database(str(tmp_path / f"{name}.db"))
        db.migrate()
        s = AuditStore(db)
        for lo in range(0, len(events), 4):
            chunk = events[lo : lo + 4]
            getattr(s, add)(chunk if add == "append" else [_tuple(e) for e in chunk])
        trails.append(list(s.rows()))
        s.close()
        db.dispose()
    assert trails[0] == trails[1]
    assert len(trails[0]) == len(events)


def test_an_append_after_the_server_ended_the_connection_is_made_once_on_a_new_one(store):
    """PostgreSQL's append sends the lock, the rows and ``COMMIT`` before reading any
    answer, so it is never sent again after a failure; a connection the server has ended
    since its last use (a restart, a terminated backend) is seen before anything is sent
    and replaced: the next append succeeds, and every event is stored once."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's connection")
    first = [_event(i, f"p{i}", "u1") for i in range(1, 4)]
    store.append(first)
    pid = store._conn.driver_connection.info.backend_pid
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    sock = store._conn.driver_connection.pgconn.socket
    deadline = time.monotonic() + 5
    while not readable(sock) and time.monotonic() < deadline:
        time.sleep(0.02)  # the server's farewell on its way
    second = [_event(i, f"p{i}", "u1") for i in range(4, 6)]
    assert store.append(second)[0] == 5
    assert store._conn.driver_connection.info.backend_pid != pid
    stored = list(store.rows())
    assert [r.event for r in stored] == [e.event for e in first + second]
    assert verify(stored) == []


def readable(fd: int) -> bool:
    return ready(fd, select.POLLIN, 0)


def test_a_descriptor_past_1024_is_told_readable_or_not():
    """The check before an append takes any descriptor: ``select`` refuses those from
    1,024 on (a process with many connections has them), and the append would then take
    every connection for one the server had closed."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1500:
        pytest.skip("this process may not open a descriptor numbered 1,500")
    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    try:
        assert not readable(high)
        theirs.sendall(b"x")
        assert readable(high)
        os.read(high, 1)
        assert not readable(high)
        theirs.close()
        assert readable(high)  # the peer's close: an end to read
    finally:
        os.close(high)
        ours.close()


def test_a_database_that_links_the_events_otherwise_is_caught_at_the_append(store):
    """PostgreSQL makes the links; the appender checks them against its own ``link`` of
    the same rows from the hash before them, so the head a checkpoint signs is one it has
    checked. A database rewriting each hash as it is stored (a trigger here) fails the
    append (the requests fail closed) and ``audit verify`` names every such row."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL links the rows itself")
    store.append([_event(1, "p1", "u1")])
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION rewrite_hash() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.hash := md5(NEW.hash) || md5(NEW.hash); RETURN NEW; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER rewrite BEFORE INSERT ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION rewrite_hash()"
        )
    with pytest.raises(AuditError, match="linked the appended events otherwise"):
        store.append([_event(i, f"p{i}", "u1") for i in range(2, 5)])
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER rewrite ON audit_events")
    assert {f.seq for f in verify(store.rows())} >= {2, 3, 4}
    assert store.append([_event(5, "p5", "u1")])[0] == 5  # linked on from what is stored
