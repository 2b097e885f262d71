"""The hash-chained trail detects every kind of tampering, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carelink.audit import Access, AuditTrail, Who, audit_event, load_or_make_key, verify
from carelink.audit.events import REFUSED, SUCCESS
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore, agent_key, row_hash


def event(i: int, patient: str | None = None, outcome: str = SUCCESS) -> dict:
    access = Access(
        "read", f"/fhir/Patient/p{i}", f"req-{i}", f"2026-01-01T00:00:0{i}.000000Z", "b"
    )
    who = Who(f"user-{i % 2}", "R8000", "RXX01", "TREAT")
    return audit_event(access, who, patient if patient is not None else f"p{i % 3}", outcome)


@pytest.fixture
def trail(database_url):
    db = Database(database_url)
    db.migrate()
    t = AuditTrail(AuditStore(db))
    t.record([event(i) for i in range(8)])
    yield t, db
    db.dispose()


def _sql(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_an_untouched_trail_verifies(trail):
    t, _ = trail
    assert verify(t.store.rows()) == []
    assert t.store.head()[0] == 8


def test_appends_continue_the_chain(trail):
    t, _ = trail
    assert t.record([event(9, outcome=REFUSED)])[0] == 9
    assert verify(t.store.rows()) == []


def test_stored_columns_are_read_from_the_event(trail):
    t, _ = trail
    row = next(r for r in t.store.rows() if r.seq == 2)
    assert (row.patient_id, row.outcome, row.agent) == ("p1", "0", agent_key("user-1", ""))
    assert row.recorded == "2026-01-01T00:00:01.000000Z"


@pytest.mark.parametrize(
    ("tamper", "where", "problem"),
    [
        ("UPDATE audit_events SET event = event || event WHERE seq = 4", 4, "content"),
        ("UPDATE audit_events SET patient_id = 'p9' WHERE seq = 4", 4, "patient_id differs"),
        ("UPDATE audit_events SET outcome = '4' WHERE seq = 4", 4, "outcome differs"),
        ("UPDATE audit_events SET agent = 'someone' WHERE seq = 4", 4, "agent differs"),
        ("UPDATE audit_events SET patient_id = NULL WHERE seq = 4", 4, "patient_id differs"),
        ("DELETE FROM audit_events WHERE seq = 5", 6, "missing"),
        ("UPDATE audit_events SET seq = seq + 100 WHERE seq = 8", 108, "missing"),
        ("UPDATE audit_events SET chain = 7 WHERE seq = 3", 3, "unknown hash scheme"),
    ],
)
def test_edits_moves_deletions_and_insertions_are_found_where_they_are(
    trail, tamper, where, problem
):
    t, db = trail
    _sql(db, tamper)
    findings = verify(t.store.rows())
    assert findings
    assert findings[0].seq == where
    assert any(problem in f.problem for f in findings if f.seq == where)


def test_a_row_moved_to_another_patient_and_rehashed_is_still_found(trail):
    """Re-hashing the moved row (the scheme is public) breaks the link to the next row,
    and the column no longer says what its event says."""
    t, db = trail
    row = next(r for r in t.store.rows() if r.seq == 4)
    forged = row_hash(row.prev_hash, 4, row.recorded, "p9", row.outcome, row.agent, row.event)
    _sql(db, "UPDATE audit_events SET patient_id = 'p9', hash = :h WHERE seq = 4", h=forged)
    problems = {(f.seq, f.problem) for f in verify(t.store.rows())}
    assert (4, "patient_id differs from its event (edited)") in problems
    assert (5, "does not follow the record before it (deleted, inserted or reordered)") in problems
    assert not any("content does not match" in p for _, p in problems)


def test_swapping_two_rows_is_found(trail):
    t, db = trail
    cols = "recorded, patient_id, outcome, event, prev_hash, hash, agent"
    with db.engine.begin() as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                sa.text(f"SELECT seq, {cols} FROM audit_events WHERE seq IN (2, 3)")  # noqa: S608
            )
        }
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq IN (2, 3)"))
        for seq, other in ((2, 3), (3, 2)):
            conn.execute(
                sa.text(
                    f"INSERT INTO audit_events (seq, {cols}, chain) "  # noqa: S608
                    "VALUES (:s, :a, :b, :c, :d, :e, :f, :g, 2)"
                ),
                dict(zip("abcdefg", rows[other], strict=True), s=seq),
            )
    assert {f.seq for f in verify(t.store.rows())} >= {2, 3}


def test_truncation_is_found_with_a_checkpoint_kept_elsewhere(trail, tmp_path):
    t, db = trail
    key = load_or_make_key(tmp_path / "keys")
    checkpoint = t.checkpoint(key)
    assert verify(t.store.rows(), checkpoint, key.public_key()) == []
    _sql(db, "DELETE FROM audit_events WHERE seq >= 7")
    assert verify(t.store.rows()) == []  # the chain alone cannot see a cut-off tail ...
    findings = verify(t.store.rows(), checkpoint, key.public_key())
    assert [f.problem for f in findings] == [
        "trail ends at record 6, before this checkpoint (truncated)"
    ]


def test_a_checkpoint_signed_by_another_key_is_refused(trail, tmp_path):
    t, _ = trail
    forged = t.checkpoint(Ed25519PrivateKey.generate())
    ours = load_or_make_key(tmp_path / "keys")
    findings = verify(t.store.rows(), forged, ours.public_key())
    assert findings[0].problem.startswith("checkpoint signature is not valid")


def test_an_unwritable_trail_raises_audit_error(trail):
    t, db = trail
    _sql(db, "DROP TABLE audit_events")
    with pytest.raises(AuditError):
        t.record([event(1)])


def test_each_group_commit_reports_its_time_and_size(trail):
    """Concurrent requests' events go in one commit; the observer hears each commit."""
    import asyncio

    from carelink.audit import GroupCommit

    t, _ = trail
    heard: list[tuple[float, int]] = []
    ticks = iter([1.0, 1.25, 2.0, 2.5])
    group = GroupCommit(t, lambda s, n: heard.append((s, n)), clock=lambda: next(ticks))

    async def requests() -> None:
        await asyncio.gather(*(group.record([event(10 + i)]) for i in range(3)))
        await group.record([event(20), event(21)])

    asyncio.run(requests())
    group.close()
    assert heard == [(0.25, 3), (0.5, 2)]
