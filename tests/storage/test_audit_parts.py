"""A request's events stored in part (``storage.audit_store``, "Shared parts"): what the
events of one search share is stored once, each row keeping only its patient and id.

The guarantee attacked here: storing in part changes nothing anyone can observe of the
trail but its size. Every read gives each event's very bytes as appended, in sequence
and by patient; the chain verifies; and any change to what is stored (a shared part
edited, deleted or swapped, a row pointed at another part or at none) is found by
``verify`` at every event it touches. A trail from before migration 23 reads and
verifies as it did, and takes events in part after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.audit import verify
from carelink.audit.events import Access, RequestEvents, Row, Who
from carelink.audit.writer import WriterProcess, WriterSpec, frame_rows, rows_frame
from carelink.storage import Database
from carelink.storage.audit_search import AuditQuery, AuditSearch
from carelink.storage.audit_store import AuditStore, Shared, whole
from carelink.storage.migrations import MIGRATIONS

PARTS = next(n for n, d, _ in MIGRATIONS if d.startswith("audit trail: what a request's"))
_WHO = Who("dr-1", "R8000", "RXX01", "TREAT", "https://idp.example", "app-1")


def _search(n: int, patients: list[str], glass: frozenset[str] = frozenset()) -> list[Row]:
    """A search's events, as the request path makes them: one a person returned."""
    access = Access(
        "search-type",
        f"/fhir/Patient?family=Smith&given=J&birthdate=ge1954-01-01&n={n}",
        f"req-{n}",
        f"2026-12-03T10:00:00.{n:06d}Z",
        "http://127.0.0.1:8000/fhir",
    )
    ids = iter(f"ev-{n}-{i}" for i in range(len(patients)))
    return RequestEvents(access, _WHO, "0").rows(patients, lambda: next(ids), glass)


def _append(db: Database, *batches: list[Row]) -> None:
    """Each batch through the real writer child, as the gateway sends it."""
    writer = WriterProcess(WriterSpec(db.url))

    async def go() -> None:
        for batch in batches:
            await writer.record(batch)

    try:
        asyncio.run(go())
    finally:
        writer.close()


def _stored(db: Database) -> list[tuple[int, int | None, int]]:
    """Each row's seq, the part it names and the size of its ``event`` as stored."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT seq, part, event FROM audit_events ORDER BY seq"))
        return [(int(s), p, len(bytes(e))) for s, p, e in rows]


def _sql(db: Database, statement: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text(statement))


def test_a_searchs_events_are_stored_once_in_part_and_read_whole(db: Database) -> None:
    """A search's events share one stored part and keep ~50 bytes each; every read (in
    sequence, by patient, by user) gives each event's very bytes, and the chain verifies.
    A break-glass event and a one-person request's event are stored whole."""
    people = [f"{k:06d}-gp" for k in range(13)]
    first = _search(1, people, frozenset({people[4]}))
    second = _search(2, people[:1])
    third = _search(3, people[5:])
    _append(db, first, second + third)
    appended = [whole(r[4]) for r in first + second + third]
    store = AuditStore(db)
    try:
        read = list(store.rows())
    finally:
        store.close()
    assert [r.event for r in read] == appended
    assert verify(read) == []
    stored = _stored(db)
    # request 1: one part (under its first event's seq) for the 12 people not under
    # break-glass; request 2's one event whole; request 3's 8 events their own part
    assert [p for _, p, _ in stored] == [1] * 4 + [None] + [1] * 8 + [None] + [15] * 8
    assert all(size < 80 for _, p, size in stored if p is not None)
    assert all(size > 1500 for _, p, size in stored if p is None)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq FROM audit_parts ORDER BY seq")).all() == [
            (1,),
            (15,),
        ]
    search = AuditSearch(db)
    by_patient = search.page(AuditQuery(patient=people[6]), 10)
    assert [e for _, e in by_patient] == [appended[15], appended[6]]
    assert {e for _, e in search.page(AuditQuery(agent="dr-1"), 100)} == set(appended)


@pytest.mark.parametrize(
    ("change", "touched"),
    [
        # a shared part edited (the user's organisation): every event naming it
        ("edit the part", set(range(1, 13)) - {5}),
        ("DELETE FROM audit_parts WHERE seq = 1", set(range(1, 13)) - {5}),
        # a row pointed at another request's part, or at none
        ("UPDATE audit_events SET part = 13 WHERE seq = 3", {3}),
        ("UPDATE audit_events SET part = NULL WHERE seq = 7", {7}),
        # a row's own piece moved to another patient's
        (
            "UPDATE audit_events SET event = (SELECT event FROM audit_events WHERE seq = 2) "
            "WHERE seq = 9",
            {9},
        ),
    ],
)
def test_any_change_to_what_is_stored_in_part_is_found(
    db: Database, change: str, touched: set[int]
) -> None:
    """What ``verify`` finds after each change: every event the change touched, as
    edited, and no other."""
    people = [f"{k:06d}-gp" for k in range(12)]
    _append(db, _search(1, people, frozenset({people[4]})), _search(2, people[:3]))
    if change == "edit the part":
        with db.engine.begin() as conn:
            part = sa.text("SELECT fragments FROM audit_parts WHERE seq = 1")
            kept = bytes(conn.execute(part).scalar_one())
            assert kept.count(b"RXX01") == 2
            conn.execute(
                sa.text("UPDATE audit_parts SET fragments = :f WHERE seq = 1"),
                {"f": kept.replace(b"RXX01", b"RXX02")},
            )
    else:
        _sql(db, change)
    store = AuditStore(db)
    try:
        found = verify(store.rows())
    finally:
        store.close()
    assert {f.seq for f in found} == touched
    assert all("edited" in f.problem or "does not match" in f.problem for f in found)


def test_a_trail_from_before_migration_23_reads_the_same_and_takes_events_in_part(
    db: Database,
) -> None:
    """A trail as it was before the migration (no ``part``, no ``audit_parts``, every
    event whole), upgraded: its events read back as they were, new events are stored in
    part after them, the chain verifies across both, and a second run does nothing."""
    people = [f"{k:06d}-gp" for k in range(5)]
    old = [(*r[:4], whole(r[4])) for r in _search(1, people)]
    _sql(db, "DROP TABLE audit_parts")
    _sql(db, "ALTER TABLE audit_events DROP COLUMN part")
    _sql(db, f"DELETE FROM schema_version WHERE version = {PARTS}")  # noqa: S608
    with db.engine.begin() as conn:  # the old append: every column but ``part``
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (seq, recorded, patient_id, outcome, event, "
                "prev_hash, hash, agent, chain) VALUES (:s, :r, :p, :o, :e, :ph, :h, :a, 3)"
            ),
            _chained_old(old),
        )
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
    new = _search(2, people)
    _append(db, new)
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)  # again: nothing to do
    store = AuditStore(db)
    try:
        read = list(store.rows())
    finally:
        store.close()
    assert [r.event for r in read] == [r[4] for r in old] + [whole(r[4]) for r in new]
    assert verify(read) == []
    assert [p for _, p, _ in _stored(db)] == [None] * 5 + [6] * 5


def _chained_old(rows: list[Row]) -> list[dict[str, object]]:
    from carelink.storage.audit_store import GENESIS, row_hash

    prev, out = GENESIS, []
    for seq, (recorded, patient, outcome, agent, event) in enumerate(rows, start=1):
        assert isinstance(event, bytes)
        h = row_hash(prev, seq, recorded, patient, outcome, agent, event, 3)  # as then
        out.append(
            {"s": seq, "r": recorded, "p": patient, "o": outcome, "e": event, "ph": prev}
            | {"h": h, "a": agent}
        )
        prev = h
    return out


def test_the_writer_frame_carries_a_part_once_and_refuses_one_not_sent() -> None:
    """A frame holds each shared part's bytes once, however many events name it, and
    gives back the very rows; a frame naming a part it has not sent is refused."""
    a, b = _search(1, ["p1", "p2", "p3"]), _search(2, ["q1", "q2"])
    rows = a + b + _search(3, ["r1"])
    frame = rows_frame(rows)
    assert frame_rows(frame) == rows
    fragments = a[0][4]
    assert isinstance(fragments, Shared)
    assert frame.count(fragments.fragments[0]) == 1
    size = int.from_bytes(frame[:4], "big")
    shapes, heads = orjson.loads(frame[4 : 4 + size])
    heads[0][4] = -2  # the second part, before the first was sent
    broken = orjson.dumps([shapes, heads])
    with pytest.raises(ValueError, match="part"):
        frame_rows(len(broken).to_bytes(4, "big") + broken + frame[4 + size :])
    # a part named in turn but never described: refused as unreadable, not a crash
    heads[0][4] = -1
    undescribed = orjson.dumps([[], heads[:1]])
    with pytest.raises(ValueError, match="does not describe"):
        frame_rows(len(undescribed).to_bytes(4, "big") + undescribed + frame[4 + size :])


def test_pieces_that_hold_the_separator_are_stored_whole(db: Database) -> None:
    """Pieces a NUL byte could not be told apart in (none the gateway makes: JSON writes
    it escaped) are stored whole, and read back as appended."""
    shared = (b'{"a":', b',"b":', b"}")
    rows: list[Row] = [
        ("2026-12-03T10:00:00Z", "p1", "0", None, Shared(shared, (b'"x\x00"', b"1"))),
        ("2026-12-03T10:00:00Z", "p2", "0", None, Shared(shared, (b'"y"', b"2"))),
        ("2026-12-03T10:00:00Z", "p3", "0", None, Shared((b"{\x00", b"}"), (b'"z"',))),
    ]
    store = AuditStore(db)
    try:
        store.append_rows(rows)
        read = list(store.rows())
    finally:
        store.close()
    assert [r.event for r in read] == [whole(r[4]) for r in rows]
    assert [p for _, p, _ in _stored(db)] == [None, 1, None]


#: pieces of an event: short JSON-ish bytes, now and then holding the separator
_piece = st.binary(max_size=12) | st.sampled_from([b"", b"\x00", b'"a\x00b"', b"{}"])
#: an event's body: whole, or a part (one of a few, so events share them) and its fills,
#: of the right number for it, or not
_body = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.tuples(st.integers(0, 3), st.lists(_piece, max_size=3)),
)
_PARTS = [(b'{"a":', b',"b":', b"}"), (b"{", b"}"), (b"[", b"\x00", b",", b"]"), (b"{}",)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies=st.lists(_body, min_size=1, max_size=8), patient=st.sampled_from([None, "p1"]))
def test_whatever_the_pieces_every_event_reads_back_as_appended(
    db: Database, bodies: list[Any], patient: str | None
) -> None:
    """Any batch of events, whole or in pieces (shared parts with NULs in them, fills that
    hold one, too few or too many fills for their part, none): the append takes each
    event that fits its part, every read gives its very bytes, and each row's hash holds;
    a batch with an event whose pieces do not fit its part is refused whole."""
    rows: list[Row] = []
    for n, body in enumerate(bodies):
        made: Any = body if isinstance(body, bytes) else Shared(_PARTS[body[0]], tuple(body[1]))
        rows.append(("2026-12-03T10:00:00Z", patient, "0", f"dr-{n % 2}", made))
    fits = all(isinstance(r[4], bytes) or len(r[4].fragments) == len(r[4].fills) + 1 for r in rows)
    store = AuditStore(db)
    try:
        before = len(list(store.rows()))
        if not fits:
            with pytest.raises(ValueError, match="do not fit"):
                store.append_rows(rows)
            assert len(list(store.rows())) == before
            return
        store.append_rows(rows)
        read = list(store.rows())
    finally:
        store.close()
    assert [r.event for r in read[before:]] == [whole(r[4]) for r in rows]
    # the chain holds (``verify`` would also hold each event's JSON to its columns)
    assert all(r.hash == r.expected_hash() for r in read)
    assert [r.prev_hash for r in read[1:]] == [r.hash for r in read[:-1]]
