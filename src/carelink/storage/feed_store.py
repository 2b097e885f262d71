"""What a source pushes as a feed (HL7 v2 over MLLP), kept durably per source.

Every accepted message is written with its sender's control id (MSH-10) as
part of the key, so a replay or a resend of a message already stored is
recognised and changes nothing. A message is stored in one transaction with
everything it changes: the person it is about (their latest demographics
message and the time their part was last changed) and, for a merge, the
retired local id pointing at the surviving one, in the feed and in the
patient index. The listener answers the sender only after that commit.

The store knows rows and text, not HL7: the listener reads the messages and
hands in plain values (``Arrival``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carelink.storage.database import Database
from carelink.storage.feed_tables import feed_messages, feed_people
from carelink.storage.index_linking import repoint_link
from carelink.storage.loop_guard import loop_bounded


@dataclass(frozen=True)
class Arrival:
    """One accepted message, read by the listener into plain values."""

    source: str
    control_id: str  # MSH-10
    kind: str  # "ADT^A28", "ORU^R01" ...
    local_id: str  # PID-3 (the MR identifier); for a merge, the surviving id
    received_at: str  # FHIR instant
    body: str  # the message as received (segments separated by CR)
    demographics: bool = False  # the message carries the person's full PID
    merged_from: str | None = None  # for a merge: the retired local id (MRG-1)
    #: for a merge: the gateway id of the surviving local record's Patient, which the
    #: index link of the retired id takes over when the survivor has no link of its own
    surviving_patient_id: str | None = None


@dataclass(frozen=True)
class FeedRecord:
    """A person's part of a source, as the feed left it."""

    local_id: str  # after following merges
    person: str | None  # the latest demographics message
    messages: list[str]  # every other message about them, in arrival order
    as_of: str  # when the last message about them was applied
    version: str  # changes whenever a message about them is applied


@loop_bounded
class FeedStore:
    """Durable intake and reads of pushed HL7 v2 messages."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def apply(self, arrival: Arrival) -> bool:
        """Store the message and apply it; False (and nothing changed) when this
        source's control id was stored before."""
        try:
            with self.db.engine.begin() as conn:
                if self.db.is_sqlite:  # commit means on disk, not only in the WAL buffer
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                self._apply(conn, arrival)
        except sa.exc.IntegrityError:
            return False
        return True

    def _apply(self, conn: Connection, a: Arrival) -> None:
        if not self.db.is_sqlite:
            # one source's messages are numbered and committed in one order: a number is
            # handed out at the insert, and a message numbered first but committed after
            # a later one was passed over by an update that read between the two commits
            # (``messages_after``: by number, from a cursor). SQLite takes one writer at
            # a time already.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": storing_key(a.source)})
        local = _surviving(conn, a.source, a.local_id)
        inserted = conn.execute(
            feed_messages.insert().values(
                source=a.source,
                control_id=a.control_id,
                kind=a.kind,
                local_id=local,
                received_at=a.received_at,
                body=a.body,
            )
        ).inserted_primary_key
        assert inserted is not None
        seq = inserted[0]
        inherited = None
        if a.merged_from and a.merged_from != local:
            inherited = self._merge(conn, a, a.merged_from, local)
        row = conn.execute(
            sa.select(feed_people.c.person_seq).where(
                feed_people.c.source == a.source, feed_people.c.local_id == local
            )
        ).first()
        known = row[0] if row is not None and row[0] is not None else inherited
        person_seq = seq if a.demographics else known
        values = {"person_seq": person_seq, "as_of": a.received_at, "last_seq": seq}
        if row is None:
            conn.execute(feed_people.insert().values(source=a.source, local_id=local, **values))
        else:
            conn.execute(
                feed_people.update()
                .where(feed_people.c.source == a.source, feed_people.c.local_id == local)
                .values(**values)
            )

    def _merge(self, conn: Connection, a: Arrival, retired: str, survivor: str) -> int | None:
        """Move the retired id's messages to the survivor and point it there, here
        and in the patient index; the retired id's demographics message, if any."""
        conn.execute(
            feed_messages.update()
            .where(feed_messages.c.source == a.source, feed_messages.c.local_id == retired)
            .values(local_id=survivor)
        )
        old = feed_people.c
        conn.execute(
            feed_people.update()
            .where(old.source == a.source, old.merged_into == retired)
            .values(merged_into=survivor)
        )
        exists = conn.execute(
            sa.select(old.person_seq).where(old.source == a.source, old.local_id == retired)
        ).first()
        if exists is None:
            conn.execute(
                feed_people.insert().values(
                    source=a.source,
                    local_id=retired,
                    person_seq=None,
                    as_of=a.received_at,
                    last_seq=0,
                    merged_into=survivor,
                )
            )
        else:
            conn.execute(
                feed_people.update()
                .where(old.source == a.source, old.local_id == retired)
                .values(merged_into=survivor, person_seq=None)
            )
        repoint_link(conn, a.source, retired, survivor, a.surviving_patient_id or "")
        return None if exists is None else exists[0]

    def record(self, source: str, local_id: str) -> FeedRecord | None:
        """The person's stored part (following merges), or None when the feed has
        said nothing about them."""
        with self.db.engine.connect() as conn:
            local = _surviving(conn, source, local_id)
            row = conn.execute(
                sa.select(
                    feed_people.c.person_seq, feed_people.c.as_of, feed_people.c.last_seq
                ).where(feed_people.c.source == source, feed_people.c.local_id == local)
            ).first()
            if row is None:
                return None
            person_seq, as_of, last_seq = row
            m = feed_messages.c
            person: str | None = None
            messages: list[str] = []
            for seq, body in conn.execute(
                sa.select(m.seq, m.body)
                .where(m.source == source, m.local_id == local)
                .order_by(m.seq)
            ):
                if seq == person_seq:
                    person = body
                else:
                    messages.append(body)
        return FeedRecord(local, person, messages, as_of, f"feed-{last_seq}")

    def people(self, source: str, batch: int = 1000) -> Iterator[tuple[str, str, str]]:
        """(local id, latest demographics message, as-of) of everyone the source's feed
        has introduced and no merge has retired, in local id order."""
        after = ""
        p, m = feed_people.c, feed_messages.c
        while True:
            with self.db.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(p.local_id, m.body, p.as_of)
                    .join(feed_messages, m.seq == p.person_seq)
                    .where(p.source == source, p.merged_into.is_(None), p.local_id > after)
                    .order_by(p.local_id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for local, body, as_of in rows:
                yield str(local), str(body), str(as_of)
            after = rows[-1][0]

    def messages_after(
        self, source: str, seq: int, kinds: Collection[str], limit: int
    ) -> Iterator[tuple[int, str]]:
        """(seq, body) of the source's messages of ``kinds`` stored after ``seq``, in the
        order they were stored, at most ``limit`` (read in one query: a page)."""
        m = feed_messages.c
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.seq, m.body)
                .where(m.source == source, m.seq > seq, m.kind.in_(sorted(kinds)))
                .order_by(m.seq)
                .limit(limit)
            ).all()
        return iter([(int(s), str(b)) for s, b in rows])

    def count(self, source: str) -> int:
        """How many messages the source's feed has stored."""
        with self.db.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(feed_messages)
                    .where(feed_messages.c.source == source)
                ).scalar_one()
            )


def _surviving(conn: Connection, source: str, local_id: str) -> str:
    """The local id a merge left standing for ``local_id`` (itself when never merged)."""
    seen = {local_id}
    while True:
        row = conn.execute(
            sa.select(feed_people.c.merged_into).where(
                feed_people.c.source == source, feed_people.c.local_id == local_id
            )
        ).first()
        if row is None or row[0] is None or row[0] in seen:
            return local_id
        local_id = row[0]
        seen.add(local_id)


def storing_key(source: str) -> int:
    """The advisory lock key of storing ``source``'s feed messages (a signed 64-bit
    integer; ``FeedStore._apply``)."""
    digest = hashlib.blake2b(f"carelink:feed:{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
