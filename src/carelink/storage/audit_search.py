"""Searching the audit trail: by patient, agent, time and outcome, newest first.

Pages are keyset pages over the sequence number (``before``): events
appended while someone pages (their own reads of the trail, for one) never
shift a page, and every stored event is reachable however many there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from carelink.storage.audit_blocks import indexed_upto, patient_seqs
from carelink.storage.audit_store import (
    IDENTIFIED,
    agent_key,
    agent_prefix,
    whole_event,
    with_parts,
)
from carelink.storage.database import Database
from carelink.storage.loop_guard import loop_bounded
from carelink.storage.tables import audit_events, audit_parts

#: lo <= recorded < hi (either end open when None)
Span = tuple[str | None, str | None]


@dataclass(frozen=True)
class AuditQuery:
    """What to find. ``recorded``: clauses all of which hold, each true when the
    recorded instant falls in one of its spans (text comparison: every stored
    instant has the same ``YYYY-MM-DDThh:mm:ss.ffffffZ`` shape).

    ``agent``: the requesting user's subject; ``issuer``: the issuer that vouched for
    them (None: any issuer, rows stored before issuers were recorded included; ``""``:
    none known, those older rows only and callers of no issuer)."""

    patient: str | None = None
    agent: str | None = None
    has_patient: bool | None = None
    outcomes: tuple[str, ...] = ()
    recorded: tuple[tuple[Span, ...], ...] = ()
    issuer: str | None = None


def _where(q: AuditQuery, mark: int = 0, before: int | None = None) -> list[sa.ColumnElement[bool]]:
    """The query's conditions; ``mark``: the last event in a patient index block."""
    c = audit_events.c
    out: list[sa.ColumnElement[bool]] = []
    if before is not None:
        out.append(c.seq < before)
    if q.patient is not None:
        # found through the patient index's blocks and the tail (``audit_blocks``), and
        # held to the patient here: an index row naming another event adds nothing
        out.append(c.seq.in_(patient_seqs(q.patient, mark, before)))
        out.append(c.patient_id == q.patient)
    if q.agent is not None:
        out.append(_agent_is(q.agent, q.issuer))
    if q.has_patient is not None:
        out.append(c.patient_id.is_not(None) if q.has_patient else c.patient_id.is_(None))
    if q.outcomes:
        out.append(c.outcome.in_(q.outcomes))
    for spans in q.recorded:
        either = []
        for lo, hi in spans:
            both = []
            if lo is not None:
                both.append(c.recorded >= lo)
            if hi is not None:
                both.append(c.recorded < hi)
            either.append(sa.and_(sa.true(), *both))
        out.append(sa.or_(sa.false(), *either))
    return out


def _agent_is(subject: str, issuer: str | None) -> sa.ColumnElement[bool]:
    """Rows whose requesting user is ``subject`` at ``issuer`` (any when None). Rows of
    an older scheme hold the bare subject: they name no issuer, so only a search for
    any issuer or none finds them. The prefix is compared as a substring, not with
    ``LIKE`` (case-blind on SQLite: ``DR-1`` is not ``dr-1``)."""
    c = audit_events.c
    older = sa.and_(c.chain < IDENTIFIED, c.agent == subject)
    if issuer is None:
        prefix = agent_prefix(subject)
        whole = sa.func.substr(c.agent, 1, len(prefix)) == prefix
        return sa.or_(older, sa.and_(c.chain >= IDENTIFIED, whole))
    exact = sa.and_(c.chain >= IDENTIFIED, c.agent == agent_key(subject, issuer))
    return sa.or_(older, exact) if issuer == "" else exact


@loop_bounded
class AuditSearch:
    """Counted, paged reads of the trail."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def count(self, q: AuditQuery) -> int:
        """How many events match, exactly."""
        with self.db.engine.connect() as conn:
            mark = indexed_upto(conn) if q.patient is not None else 0
            stmt = sa.select(sa.func.count()).select_from(audit_events).where(*_where(q, mark))
            return int(conn.execute(stmt).scalar_one())

    def page(self, q: AuditQuery, limit: int, before: int | None = None) -> list[tuple[int, bytes]]:
        """Up to ``limit`` matching events older than ``before`` (seq), newest first, each
        event's bytes whole."""
        c = audit_events.c
        with self.db.engine.connect() as conn:
            mark = indexed_upto(conn) if q.patient is not None else 0
            where = _where(q, mark, before)
            stmt = (
                sa.select(c.seq, c.event, audit_parts.c.fragments)
                .select_from(with_parts())
                .where(*where)
                .order_by(c.seq.desc())
                .limit(limit)
            )
            return [
                (int(r[0]), whole_event(bytes(r[1]), None if r[2] is None else bytes(r[2])))
                for r in conn.execute(stmt)
            ]
