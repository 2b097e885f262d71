"""The hash-chained trail detects every kind of tampering, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carelink.audit.trail import AuditTrail, load_or_make_key, verify
from carelink.errors import AuditError
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore


@pytest.fixture
def trail(database_url):
    db = Database(database_url)
    db.migrate()
    t = AuditTrail(AuditStore(db))
    t.record(
        [
            (f"2026-01-01T00:00:0{i}Z", f"p{i % 3}", "0", {"resourceType": "AuditEvent", "n": i})
            for i in range(8)
        ]
    )
    yield t, db
    db.dispose()


def _sql(db: Database, statement: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text(statement))


def test_an_untouched_trail_verifies(trail):
    t, _ = trail
    assert verify(t.store) == []
    assert t.store.head()[0] == 8


def test_appends_continue_the_chain(trail):
    t, _ = trail
    assert t.record([("2026-01-01T00:01:00Z", None, "4", {"resourceType": "AuditEvent"})]) == 9
    assert verify(t.store) == []


@pytest.mark.parametrize(
    ("tamper", "where"),
    [
        ("UPDATE audit_events SET event = event || event WHERE seq = 4", 4),
        ("DELETE FROM audit_events WHERE seq = 5", 6),
        ("UPDATE audit_events SET seq = seq + 100 WHERE seq = 8", 108),
    ],
)
def test_edits_deletions_and_insertions_are_found_where_they_are(trail, tamper, where):
    t, db = trail
    _sql(db, tamper)
    findings = verify(t.store)
    assert findings
    assert findings[0].seq == where


def test_reordering_is_found(trail):
    t, db = trail
    with db.engine.begin() as conn:
        rows = {
            r[0]: bytes(r[1])
            for r in conn.execute(
                sa.text("SELECT seq, event FROM audit_events WHERE seq IN (2, 3)")
            )
        }
        for seq, other in ((2, 3), (3, 2)):
            conn.execute(
                sa.text("UPDATE audit_events SET event = :e WHERE seq = :s"),
                {"e": rows[other], "s": seq},
            )
    assert {f.seq for f in verify(t.store)} >= {2, 3}


def test_truncation_is_found_with_a_checkpoint_kept_elsewhere(trail, tmp_path):
    t, db = trail
    key = load_or_make_key(tmp_path / "keys")
    checkpoint = t.checkpoint(key)
    assert verify(t.store, checkpoint, key.public_key()) == []
    _sql(db, "DELETE FROM audit_events WHERE seq >= 7")
    assert verify(t.store) == []  # the chain alone cannot see a cut-off tail ...
    findings = verify(t.store, checkpoint, key.public_key())
    assert [f.problem for f in findings] == ["trail ends before this checkpoint (truncated)"]


def test_a_checkpoint_signed_by_another_key_is_refused(trail, tmp_path):
    t, _ = trail
    forged = t.checkpoint(Ed25519PrivateKey.generate())
    ours = load_or_make_key(tmp_path / "keys")
    findings = verify(t.store, forged, ours.public_key())
    assert findings[0].problem == "checkpoint signature is not valid"


def test_an_unwritable_trail_raises_audit_error(trail):
    t, db = trail
    _sql(db, "DROP TABLE audit_events")
    with pytest.raises(AuditError):
        t.record([("2026-01-01T00:00:00Z", "p", "0", {"resourceType": "AuditEvent"})])
