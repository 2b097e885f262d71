"""The audit trail's events on PostgreSQL compressed with lz4 (migration 21), not pglz:
a ~2 KB event's row is over the size at which PostgreSQL compresses, and pglz cost the
server ~20 us an event (benchmarks/README.md, "PostgreSQL: the year range's audit
events"). A trail upgraded with events stored under both methods reads back every
event's very bytes, by patient and in sequence, and verifies.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy as sa

from carelink.audit import Access, Who, audit_event, verify, verify_index
from carelink.audit.events import columns
from carelink.storage import Database
from carelink.storage.audit_search import AuditQuery, AuditSearch
from carelink.storage.audit_store import AuditStore, NewEvent

pytestmark = pytest.mark.postgres


def _event(n: int, patient: str) -> NewEvent:
    """A gateway-sized event (~2 KB: a year-range search's query and a long user)."""
    recorded = f"2026-12-02T10:00:00.{n:06d}Z"
    query = (
        f"/fhir/Patient?family=Smith&given=J&birthdate=ge1954-01-01&birthdate=le1954-12-31&n={n}"
    )
    access = Access("search-type", query, f"req-{n}", recorded, "http://127.0.0.1:8000/fhir")
    who = Who(f"user-{n % 7}-" + "x" * 40, "R8000", "RXX01", "TREAT", "https://idp.example")
    e = audit_event(access, who, patient, "0")
    return NewEvent(*columns(e), orjson.dumps(e))


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    database.migrate()
    with database.engine.connect() as conn:
        offered = conn.execute(
            sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
    if not offered or "lz4" not in offered:
        database.dispose()
        pytest.skip("this PostgreSQL server is built without lz4")
    yield database
    database.dispose()


def _methods(db: Database) -> dict[int, str | None]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, pg_column_compression(event) FROM audit_events ORDER BY seq")
        )
        return {int(seq): method for seq, method in rows}


def test_a_new_event_is_stored_compressed_with_lz4(db: Database) -> None:
    """A gateway-sized event is compressed when stored (its row is over the threshold),
    and with lz4: with pglz (the server's default, as before migration 21) this fails."""
    events = [_event(n, f"{n:06d}-gp") for n in range(13)]
    assert all(len(e.event) > 1800 for e in events)
    store = AuditStore(db)
    try:
        store.append(events)
    finally:
        store.close()
    assert set(_methods(db).values()) == {"lz4"}


def test_a_trail_upgraded_between_methods_reads_the_same_bytes_and_verifies(
    db: Database,
) -> None:
    """Events stored with pglz before the migration and with lz4 after it: each read back
    (in sequence, and by patient through the index's blocks and the tail) is the very
    bytes appended, and the chain and the patient index verify."""
    with db.engine.begin() as conn:  # the trail as it was before migration 21
        conn.execute(sa.text("ALTER TABLE audit_events ALTER COLUMN event SET COMPRESSION pglz"))
        conn.execute(sa.text("DELETE FROM schema_version WHERE version = 21"))
    events = [_event(n, f"{n % 5:06d}-gp") for n in range(40)]
    store = AuditStore(db)
    store.block = 16  # some events in blocks, some in the tail
    try:
        store.append(events[:20])
        store.settle()
        db.migrate()
        store.append(events[20:])
        store.settle()
    finally:
        store.close()
    methods = _methods(db)
    assert {methods[s] for s in range(1, 21)} == {"pglz"}
    assert {methods[s] for s in range(21, 41)} == {"lz4"}
    assert [r.event for r in store.rows()] == [e.event for e in events]
    search = AuditSearch(db)
    for p in range(5):
        patient = f"{p:06d}-gp"
        found = search.page(AuditQuery(patient=patient), 100)
        given = [(n + 1, e.event) for n, e in enumerate(events) if e.patient_id == patient]
        assert sorted(found) == given
    assert verify(store.rows()) == []
    assert verify_index(store) == []
