"""Append-only storage of the audit trail, chained by hash.

Each row's hash covers its sequence number, the previous row's hash and the
event bytes, so an edited, deleted, inserted or reordered row breaks the chain
from that point on. Appends from every gateway process are serialised by one
lock row that each append updates first (a row lock on PostgreSQL, the write
lock on SQLite), so the chain never forks.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.tables import audit_events

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
        self._conn: Any = None
        marks = ", ".join(["?" if db.is_sqlite else "%s"] * 7)  # placeholders, never values
        self._insert = (
            "INSERT INTO audit_events (seq, recorded, patient_id, outcome, event, prev_hash, "  # noqa: S608
            f"hash) VALUES ({marks})"
        )

    def append(self, events: Sequence[NewEvent]) -> int:
        """Append events in one transaction (durable when this returns); the last seq.

        Uses one long-lived DBAPI connection with fixed SQL (the request path
        pays for every microsecond here). ``BEGIN IMMEDIATE`` on SQLite and a
        ``FOR UPDATE`` lock on PostgreSQL serialise appends across processes.
        """
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
            driver = self._conn.driver_connection
            if self.db.is_sqlite:
                driver.isolation_level = None
                # Durable means on disk, not only in the OS cache: this connection
                # syncs the WAL at every commit (~0.2 ms here; group commit shares it).
                driver.execute("PRAGMA synchronous=FULL")
            else:
                driver.autocommit = True
        cur = self._conn.cursor()
        try:
            if self.db.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")
            else:
                cur.execute("BEGIN")
                cur.execute("SELECT appends FROM audit_lock WHERE id = 1 FOR UPDATE")
            cur.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            head = cur.fetchone()
            seq, prev = (head[0], head[1]) if head else (0, GENESIS)
            rows = []
            for e in events:
                seq += 1
                h = chain_hash(prev, seq, e.event)
                rows.append((seq, e.recorded, e.patient_id, e.outcome, e.event, prev, h))
                prev = h
            if rows:
                cur.executemany(self._insert, rows)
            cur.execute("COMMIT")
            return seq
        except Exception:
            with contextlib.suppress(Exception):  # the connection is dropped just below
                cur.execute("ROLLBACK")
            self._conn.invalidate()
            self._conn = None
            raise
        finally:
            cur.close()

    def close(self) -> None:
        """Release the append connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
