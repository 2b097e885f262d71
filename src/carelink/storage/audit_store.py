"""Append-only storage of the audit trail, chained by hash.

Each row's hash covers its sequence number, the previous row's hash and the
event bytes, so an edited, deleted, inserted or reordered row breaks the chain
from that point on. Appends from every gateway process are serialised by one
lock row that each append updates first (a row lock on PostgreSQL, the write
lock on SQLite), so the chain never forks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.tables import audit_events, audit_lock

GENESIS = "0" * 64


def chain_hash(prev_hash: str, seq: int, event: bytes) -> str:
    """The hash of one row: previous hash, position and content."""
    digest = hashlib.sha256(event).hexdigest()
    return hashlib.sha256(f"{prev_hash}|{seq}|{digest}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    """One stored audit record."""

    seq: int
    recorded: str
    patient_id: str | None
    outcome: str
    event: bytes
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class NewEvent:
    """What an append needs."""

    recorded: str
    patient_id: str | None
    outcome: str
    event: bytes


class AuditStore:
    """Appends and reads of the audit trail."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, events: Sequence[NewEvent]) -> int:
        """Append events in one transaction (durable when this returns); the last seq."""
        with self.db.engine.begin() as conn:
            conn.execute(
                audit_lock.update()
                .where(audit_lock.c.id == 1)
                .values(appends=audit_lock.c.appends + 1)
            )
            head = conn.execute(
                sa.select(audit_events.c.seq, audit_events.c.hash)
                .order_by(audit_events.c.seq.desc())
                .limit(1)
            ).first()
            seq, prev = (head[0], head[1]) if head else (0, GENESIS)
            rows = []
            for e in events:
                seq += 1
                h = chain_hash(prev, seq, e.event)
                rows.append(
                    {
                        "seq": seq,
                        "recorded": e.recorded,
                        "patient_id": e.patient_id,
                        "outcome": e.outcome,
                        "event": e.event,
                        "prev_hash": prev,
                        "hash": h,
                    }
                )
                prev = h
            if rows:
                conn.execute(audit_events.insert(), rows)
            return seq

    def rows(self) -> Iterator[AuditRow]:
        """Every row in sequence order (for verification)."""
        with self.db.engine.connect() as conn:
            for r in conn.execute(sa.select(audit_events).order_by(audit_events.c.seq)):
                event = r[4].encode() if isinstance(r[4], str) else bytes(r[4])  # tampered type
                yield AuditRow(r[0], r[1], r[2], r[3], event, r[5], r[6])

    def head(self) -> tuple[int, str]:
        """The last sequence number and its hash."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_events.c.seq, audit_events.c.hash)
                .order_by(audit_events.c.seq.desc())
                .limit(1)
            ).first()
        return (row[0], row[1]) if row else (0, GENESIS)

    def for_patient(self, patient_id: str, limit: int = 1000) -> list[bytes]:
        """The events about one patient, newest first."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_events.c.event)
                .where(audit_events.c.patient_id == patient_id)
                .order_by(audit_events.c.seq.desc())
                .limit(limit)
            )
            return [bytes(r[0]) for r in rows]
