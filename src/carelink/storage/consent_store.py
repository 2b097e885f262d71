"""Patients' Consent resources and break-glass grants, in the shared database.

Every gateway process reads them on each request (one indexed read on the
hot connection), so a change is in force on the very next request anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.hot import HotConnection
from carelink.storage.loop_guard import bounds_itself, loop_bounded
from carelink.storage.tables import break_glass, consent_versions, consents


@dataclass(frozen=True)
class ConsentRow:
    """One stored Consent."""

    id: str
    patient_id: str
    status: str
    version: int
    last_updated: str
    body: bytes


@dataclass(frozen=True)
class GrantRow:
    """One break-glass grant and its review."""

    id: str
    subject: str
    organisation: str | None
    role: str | None
    patient_id: str
    reason: str
    granted: float
    expires: float
    review_status: str
    reviewer: str | None
    review_outcome: str | None
    review_note: str | None
    reviewed: float | None
    kind: str | None = "break-glass"  # or "consent-change": a review with no access granted
    actor: str | None = None  # the full identity (``Principal.identity``) it was made by
    person: str | None = None  # issuer and subject alone (``Principal.person``)
    reviewer_identity: str | None = None


@loop_bounded
class ConsentStore:
    """Reads and writes of consents and grants."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._hot = HotConnection(db)
        # Fixed SQL; values are always bound ("?" becomes the driver's own placeholder).
        self._sql_active = self._sql(
            "SELECT id, body FROM consents WHERE patient_id = ? AND status = 'active' ORDER BY id"
        )
        self._sql_grant = self._sql(
            "SELECT 1 FROM break_glass WHERE patient_id = ? AND actor = ? AND expires > ? "
            "AND kind = 'break-glass' LIMIT 1"
        )

    def _sql(self, text: str) -> str:
        return text.replace("?", self._hot.mark)

    # -- request path -------------------------------------------------------
    @bounds_itself
    def active(self, patient_id: str) -> list[tuple[str, bytes]]:
        """(id, body) of the patient's active consents."""
        return [(str(i), bytes(b)) for i, b in self._hot.query(self._sql_active, (patient_id,))]

    @bounds_itself
    def active_of(self, patient_ids: Sequence[str]) -> dict[str, list[tuple[str, bytes]]]:
        """(id, body) of the active consents of each of ``patient_ids`` that has any, in
        one read per 500 patients (what ``active`` gives each, for a page of a search)."""
        out: dict[str, list[tuple[str, bytes]]] = {}
        for i in range(0, len(patient_ids), 500):
            part = list(dict.fromkeys(patient_ids[i : i + 500]))
            marks = ", ".join("?" * len(part))
            sql = self._sql(
                "SELECT patient_id, id, body FROM consents "  # noqa: S608 - marks only
                f"WHERE patient_id IN ({marks}) AND status = 'active' ORDER BY patient_id, id"
            )
            for patient, cid, body in self._hot.query(sql, tuple(part)):
                out.setdefault(str(patient), []).append((str(cid), bytes(body)))
        return out

    @bounds_itself
    def has_grant(self, patient_id: str, identity: str, now: float) -> bool:
        """Does the caller with this full identity (issuer, subject, organisation, role ...)
        hold an unexpired break-glass grant for the patient?"""
        return bool(self._hot.query(self._sql_grant, (patient_id, identity, now)))

    @bounds_itself
    def close(self) -> None:
        """Release the hot connection."""
        self._hot.close()

    # -- consents -----------------------------------------------------------
    def get(self, consent_id: str) -> ConsentRow | None:
        """One consent by id."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(consents).where(consents.c.id == consent_id)).first()
        return ConsentRow(*row) if row else None

    def for_patient(self, patient_id: str) -> list[ConsentRow]:
        """Every consent of a patient, newest first."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(consents)
                .where(consents.c.patient_id == patient_id)
                .order_by(consents.c.last_updated.desc(), consents.c.id)
            ).all()
        return [ConsentRow(*r) for r in rows]

    def history(self, consent_id: str) -> list[ConsentRow]:
        """Every stored version of a Consent, newest first."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    consent_versions.c.id,
                    consent_versions.c.patient_id,
                    consent_versions.c.status,
                    consent_versions.c.version,
                    consent_versions.c.last_updated,
                    consent_versions.c.body,
                )
                .where(consent_versions.c.id == consent_id)
                .order_by(consent_versions.c.version.desc())
            ).all()
        return [ConsentRow(*r) for r in rows]

    def put(
        self, row: ConsentRow, expected_version: int | None, review: GrantRow | None = None
    ) -> bool:
        """Insert (``expected_version`` None) or replace at that version; False on a conflict.
        Every version is also kept in the history, and the change's ``review`` (if it needs
        one) recorded, in the same transaction: never a change without its review."""
        values = {
            "patient_id": row.patient_id,
            "status": row.status,
            "version": row.version,
            "last_updated": row.last_updated,
            "body": row.body,
        }
        try:
            with self.db.engine.begin() as conn:
                if expected_version is None:
                    conn.execute(consents.insert().values(id=row.id, **values))
                else:
                    done = conn.execute(
                        consents.update()
                        .where(consents.c.id == row.id, consents.c.version == expected_version)
                        .values(**values)
                    )
                    if done.rowcount != 1:
                        return False
                conn.execute(consent_versions.insert().values(id=row.id, **values))
                if review is not None:
                    conn.execute(break_glass.insert().values(**review.__dict__))
                return True
        except sa.exc.IntegrityError:
            return False

    # -- break-glass ----------------------------------------------------------
    def grant(self, row: GrantRow) -> None:
        """Record a break-glass grant (its review starts as ``requested``)."""
        with self.db.engine.begin() as conn:
            conn.execute(break_glass.insert().values(**row.__dict__))

    def grants(self, status: str | None = None) -> Sequence[GrantRow]:
        """Grants, oldest first, optionally by review status."""
        q = sa.select(break_glass).order_by(break_glass.c.granted, break_glass.c.id)
        if status is not None:
            q = q.where(break_glass.c.review_status == status)
        with self.db.engine.connect() as conn:
            return [GrantRow(*r) for r in conn.execute(q).all()]

    def grant_by_id(self, grant_id: str) -> GrantRow | None:
        """One grant."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(break_glass).where(break_glass.c.id == grant_id)).first()
        return GrantRow(*row) if row else None

    def review(
        self,
        grant_id: str,
        reviewer: str,
        outcome: str,
        note: str,
        now: float,
        reviewer_identity: str | None = None,
    ) -> bool:
        """Complete a grant's review once; False if it is unknown or already reviewed."""
        with self.db.engine.begin() as conn:
            done = conn.execute(
                break_glass.update()
                .where(break_glass.c.id == grant_id, break_glass.c.review_status == "requested")
                .values(
                    review_status="completed",
                    reviewer=reviewer,
                    review_outcome=outcome,
                    review_note=note,
                    reviewed=now,
                    reviewer_identity=reviewer_identity,
                )
            )
            return done.rowcount == 1
