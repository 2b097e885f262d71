"""Append-only storage of the audit trail, chained by hash.

Each row's hash covers every column of the row (sequence number, previous
row's hash, recorded, patient, outcome, agent, the event bytes and the hash
scheme itself), so an edited, moved, deleted, inserted or reordered row
breaks the chain from that point on. Rows written before migration 9 carry
the older scheme (chain 1: sequence, previous hash and event only); see
``row_hash``. From chain 3 on, ``agent`` names the requesting user whole
(``agent_key``: subject and issuer); chain 1 and 2 rows hold the bare
subject. Appends from every gateway process are serialised by one lock row
that each append updates first (a row lock on PostgreSQL, the write lock on
SQLite), so the chain never forks. From chain 4 on, a row's own columns are
hashed apart from its place (``fields_digest``, made before the lock) and
linked to the previous hash and its sequence number (``link``): on PostgreSQL
the append's one statement makes the links itself, so the lock is held only
while the server works, never while it waits for the appending process.

On SQLite the appenders (one writer child a gateway worker) first queue for a
lock file beside the database (``<database>-audit-turn``, ``flock``): SQLite's
own wait for its write lock is a sleep of 1, 2, 5, 10 ... 100 ms between tries,
and a child that commits back to back kept winning the gaps between those
sleeps: the other child waited up to half a second while its worker's requests
waited for it (benchmarks/README.md, "The search's stalls"). A process blocked
in ``flock`` is woken the moment the lock is let go.

Shared parts. The events of one request (a search's, one a person returned) are the
same bytes but for the patient and the event's id: ~2 KB each, of which ~50 bytes are
their own. They are stored in part (``Shared``): what they share once, in
``audit_parts`` under the sequence number of the first of them, and in each row's
``event`` only what is its own, ``part`` naming the shared row. Every byte written for
a search's 13 events had cost the writer its CPU (the rows, their pages, the WAL, the
sync): benchmarks/README.md, "The seventeenth stop". The hash is over the event's whole
bytes as ever (``row_hash``: the same chain), and every read gives the whole bytes
(``whole_event``): a shared part edited, swapped or deleted changes or loses the bytes
of every event that names it, and their hashes say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.errors import error_from_result
from psycopg.pq import ConnStatus, ExecStatus

from carelink.errors import AuditError
from carelink.storage import answers
from carelink.storage.audit_blocks import (
    BLOCK,
    HEAD_SQL,
    MARK_SQL,
    block_mark_sql,
    block_rows_sql,
    block_sql,
    index_problems,
)
from carelink.storage.database import Database
from carelink.storage.tables import audit_events, audit_parts

GENESIS = "0" * 64
#: the hash scheme new rows are written with
CHAIN = 4
#: the first scheme whose ``agent`` column is ``agent_key`` (before it: the bare subject)
IDENTIFIED = 3


def agent_key(subject: str, issuer: str) -> str:
    """The ``agent`` column of a chain-3 row: the requesting user's subject and the issuer
    that vouched for it, as a JSON array (subject first, so every issuer's user of one
    subject shares the prefix ``agent_prefix``). Unambiguous whatever either holds: a
    JSON string cannot end early, so no subject passes for another issuer's."""
    return orjson.dumps([subject, issuer]).decode()


def agent_prefix(subject: str) -> str:
    """What every ``agent_key(subject, ...)`` begins with, and no other key does."""
    return orjson.dumps([subject]).decode()[:-1] + ","


def chain_hash(prev_hash: str, seq: int, event: bytes) -> str:
    """Chain 1 (rows stored before migration 9): previous hash, position and content."""
    digest = hashlib.sha256(event).hexdigest()
    return hashlib.sha256(f"{prev_hash}|{seq}|{digest}".encode()).hexdigest()


def row_hash(
    prev_hash: str,
    seq: int,
    recorded: str,
    patient_id: str | None,
    outcome: str,
    agent: str | None,
    event: bytes,
    chain: int = CHAIN,
) -> str:
    """Chain 2, 3 and 4: every column. Chain 2 and 3 hash them as one unambiguous JSON
    array (no separator games), the scheme first (so a row cannot pass for another
    scheme's). Chain 4 hashes the same array without the position (``fields_digest``)
    and links that digest to the previous hash and the position (``link``), a step
    PostgreSQL makes in the append's statement itself."""
    digest = hashlib.sha256(event).hexdigest()
    if chain >= 4:
        return link(prev_hash, seq, fields_digest(recorded, patient_id, outcome, agent, digest))
    return _linked([chain, prev_hash, seq, recorded, patient_id, outcome, agent, digest])


def _linked(fields: list[Any]) -> str:
    """Chain 2 and 3's ``row_hash`` of a row's columns with its event's own digest made
    already, in ``row_hash``'s order: chain, previous hash, seq, recorded, patient,
    outcome, agent, digest."""
    return hashlib.sha256(orjson.dumps(fields)).hexdigest()


def fields_digest(
    recorded: str, patient_id: str | None, outcome: str, agent: str | None, digest: str
) -> bytes:
    """Chain 4: the SHA-256 of the row's own columns (the event as its digest), as the
    JSON array ``[4, recorded, patient, outcome, agent, digest]``: what the row is,
    whatever its place in the trail, so it is made before the append lock is taken."""
    return hashlib.sha256(orjson.dumps([4, recorded, patient_id, outcome, agent, digest])).digest()


def link(prev_hash: str, seq: int, fields: bytes) -> str:
    """Chain 4: a row's hash, ``sha256("<previous hash>|<seq>|<fields digest as hex>")``
    in hex. Every part has a fixed alphabet that holds no ``|`` (64 hex digits, a
    decimal number, 64 hex digits), so the text has one reading. ``_CHAINED_INSERT``
    makes the same text and hash in SQL."""
    return hashlib.sha256(f"{prev_hash}|{seq}|{fields.hex()}".encode()).hexdigest()


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
    agent: str | None
    chain: int

    def expected_hash(self) -> str | None:
        """The hash this row should carry under its scheme (None: unknown scheme)."""
        if self.chain == 1:
            return chain_hash(self.prev_hash, self.seq, self.event)
        if self.chain in (2, 3, CHAIN):
            return row_hash(
                self.prev_hash,
                self.seq,
                self.recorded,
                self.patient_id,
                self.outcome,
                self.agent,
                self.event,
                self.chain,
            )
        return None


#: what separates the fragments of a shared part, and an event's own pieces, as stored:
#: never in JSON text (a NUL inside a string is written ``\u0000``)
SEP = b"\x00"


class Shared(NamedTuple):
    """An event's bytes in pieces: ``fragments``, what the events of its request share
    (one object for them all), and between them ``fills``, its own: the bytes are
    ``fragments[0] fills[0] fragments[1] ... fills[-1] fragments[-1]``. Stored in part
    (the fragments once a request, ``audit_parts``) when no piece holds ``SEP``."""

    fragments: tuple[bytes, ...]
    fills: tuple[bytes, ...]


#: an event's bytes: whole, or in pieces
Body = bytes | Shared


def whole(body: Body) -> bytes:
    """An event's bytes, whole."""
    if isinstance(body, bytes):
        return body
    return _interleave(body.fragments, body.fills)


def _interleave(fragments: Sequence[bytes], fills: Sequence[bytes]) -> bytes:
    if len(fragments) != len(fills) + 1:
        raise ValueError("an event's pieces do not fit its shared part")
    out = [fragments[0]]
    for fill, fragment in zip(fills, fragments[1:], strict=True):
        out += (fill, fragment)
    return b"".join(out)


def whole_event(event: bytes, fragments: bytes | None) -> bytes:
    """An event's bytes as appended, from its row as stored (``event``) and, for an event
    stored in part, its shared part's (``audit_parts.fragments``; None: the row names
    none, or the part is missing). Bytes that do not fit their part come back as stored:
    not what was appended, which the row's hash then says."""
    if fragments is None:
        return event
    pieces, fills = fragments.split(SEP), event.split(SEP)
    if len(pieces) != len(fills) + 1:
        return event
    return _interleave(pieces, fills)


@dataclass(frozen=True)
class NewEvent:
    """What an append needs."""

    recorded: str
    patient_id: str | None
    outcome: str
    agent: str | None
    event: Body


#: a new event as the writer child receives it: ``NewEvent``'s fields in its order
EventRow = tuple[str, str | None, str, str | None, Body]

#: the trail's head and the patient index's last block (``MARK_SQL``), in one statement
#: read under the append lock (no row: an empty trail, whose mark is read on its own)
_HEAD_SQL = (
    "SELECT seq, hash, (SELECT coalesce(max(block), 0) FROM audit_index_blocks) "
    "FROM audit_events ORDER BY seq DESC LIMIT 1"
)

#: the append lock on PostgreSQL, held until the append's commit
_LOCK_SQL = "SELECT appends FROM audit_lock WHERE id = 1 FOR UPDATE"

_COLUMNS = ("seq", "recorded", "patient_id", "outcome", "event", "prev_hash", "hash")


class AuditStore:
    """Appends and reads of the audit trail."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None
        self._committing = False
        #: the driver connection ``_CHAINED_INSERT`` is prepared on (None: none yet)
        self._prepared: Any = None
        #: ``Database.losses`` when the connection was made (one made before a later
        #: loss is not used again)
        self._losses = db.losses
        db.keeps(self)
        #: the lock file's descriptor (SQLite on a file; None: not opened, or no file)
        self._turn: int | None = None
        #: events past the patient index's last block, as last seen (None: not yet)
        self.tail: int | None = None
        #: the tail's size at which it is written as a block
        self.block = BLOCK
        #: SQLite's append, a statement a row (PostgreSQL's: ``_CHAINED_INSERT``)
        self._insert = (
            "INSERT INTO audit_events (seq, recorded, patient_id, outcome, event, prev_hash, "
            "hash, agent, chain, part) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        #: SQLite's shared parts, a statement each (PostgreSQL's go with the rows)
        self._part_insert = "INSERT INTO audit_parts (seq, fragments) VALUES (?, ?)"
        #: SQLite's block of the patient index, one pair a statement (in the process,
        #: nothing to wait for between them); PostgreSQL copies a block's rows itself in
        #: one statement (4,096 statements had held the append lock 32-110 ms a block at
        #: the full range, benchmarks/README.md, "The search's stalls on PostgreSQL")
        self._index_insert = (
            "INSERT INTO audit_patient_index (block, patient_id, seq) VALUES (?, ?, ?)"
        )

    def append(self, events: Sequence[NewEvent]) -> tuple[int, str]:
        """Append events in one transaction (durable when this returns); the new head
        (last seq and its hash).

        Uses one long-lived DBAPI connection with fixed SQL (the request path
        pays for every microsecond here). ``BEGIN IMMEDIATE`` on SQLite and a
        ``FOR UPDATE`` lock on PostgreSQL serialise appends across processes.
        A connection found broken before anything was committed (the database
        restarted since its last use) is replaced and the append made once more on
        the new one; after ``COMMIT`` was sent it never is (that could write twice).
        """
        return self._retried(self._append, events)

    def append_rows(self, rows: Sequence[EventRow]) -> tuple[int, str]:
        """``append`` of events as plain tuples in ``NewEvent``'s field order (the writer
        child's frame, ``audit.writer.frame_rows``): the same rows stored, no object
        made an event."""
        return self._retried(self._append_rows, rows)

    def _retried(self, append: Callable[[Any], tuple[int, str]], events: Any) -> tuple[int, str]:
        for attempt in (1, 2):
            fresh = self._conn is None
            self._committing = False
            try:
                return append(events)
            except Exception:
                if fresh or self._committing or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> Any:
        if self._conn is None:
            self._losses = self.db.losses
            self._conn = self.db.engine.raw_connection()
            driver = self._conn.driver_connection
            if self.db.is_sqlite:
                driver.isolation_level = None
                # Durable means on disk, not only in the OS cache: this connection
                # syncs the WAL at every commit (~0.2 ms here; group commit shares it).
                driver.execute("PRAGMA synchronous=FULL")
                self._turn = _turn_file(driver)
            else:
                driver.autocommit = True
        return self._conn

    def _lock(self, cur: Any) -> None:
        """Begin, holding the append lock until commit (on SQLite, the turn first:
        ``_unlock`` lets it go after the commit or rollback)."""
        if self.db.is_sqlite:
            if self._turn is not None:
                fcntl.flock(self._turn, fcntl.LOCK_EX)
            cur.execute("BEGIN IMMEDIATE")
        else:
            cur.execute("BEGIN")
            cur.execute(_LOCK_SQL)

    def _lock_blocks(self, cur: Any) -> None:
        """Begin, holding the patient index's lock until commit: on PostgreSQL a lock of
        its own, on ``audit_index_blocks``, that block writers take and appends never do
        (an append writes no index row and only reads the last block), so the other
        appenders go on while a block is written (it had held the append lock 25-35 ms
        every 4,096 events at the full range; benchmarks/README.md, "PostgreSQL: the
        year range's audit events"). SHARE ROW EXCLUSIVE conflicts with itself and with
        writes to the table, never with reads. On SQLite a block takes the append lock
        (the database has one writer at a time whatever the lock)."""
        if self.db.is_sqlite:
            self._lock(cur)
        else:
            cur.execute("BEGIN")
            cur.execute("LOCK TABLE audit_index_blocks IN SHARE ROW EXCLUSIVE MODE")

    def _unlock(self) -> None:
        """Let the turn go (nothing if not held: ``flock`` unlocking is idempotent)."""
        if self._turn is not None:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _drop(self, cur: Any) -> None:
        with contextlib.suppress(Exception):  # the connection is dropped just below
            if cur is not None:
                cur.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            self._conn.invalidate()
        self._conn = None
        self._close_turn()

    def _close_turn(self) -> None:
        if self._turn is not None:
            with contextlib.suppress(OSError):
                os.close(self._turn)  # closing lets the lock go too
            self._turn = None

    def _append(self, events: Sequence[NewEvent]) -> tuple[int, str]:
        return self._append_rows(
            [(e.recorded, e.patient_id, e.outcome, e.agent, e.event) for e in events]
        )

    def _append_rows(self, events: Sequence[EventRow]) -> tuple[int, str]:
        """One transaction: the lock, the head, the chained rows, ``COMMIT``. What does
        not depend on the head (each event's bytes, their digests and the row's own
        fields' digest, ``_unchained``) is made before the lock: the other appenders
        wait while it is held."""
        made = _unchained(events)
        if self.db.is_sqlite or not events:
            return self._append_here(made)
        return self._append_there(made)

    def _append_here(
        self, made: tuple[list[Unchained], list[tuple[int, bytes]]]
    ) -> tuple[int, str]:
        """SQLite's append (and an empty one): the head read under the lock, the rows
        chained here, a statement a row."""
        conn = self._connection()
        sqlite = self.db.is_sqlite
        cur = conn.cursor() if sqlite else conn.driver_connection.cursor()
        try:
            self._lock(cur)
            cur.execute(_HEAD_SQL)
            rows, parts, seq, prev, mark = _chained(cur.fetchone() or _empty(cur), made)
            if rows:
                cur.executemany(self._insert, rows)
                if parts:
                    cur.executemany(self._part_insert, parts)
            self._committing = True
            cur.execute("COMMIT")
            self._unlock()
            self.tail = seq - mark
            return seq, prev
        except Exception:
            self._drop(cur)
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def _append_there(
        self, made: tuple[list[Unchained], list[tuple[int, bytes]]]
    ) -> tuple[int, str]:
        """PostgreSQL's append in one round trip, on libpq's pipeline: ``BEGIN``, the
        append lock, ``_CHAINED_INSERT`` (the rows chained by the server, its values
        encoded before anything is sent) and ``COMMIT``, written in one flush and their
        results read once; durable when the ``COMMIT``'s result has come. The server
        runs them in turn, so the insert's statement starts (and takes its snapshot, the
        transaction being READ COMMITTED) only once the lock is granted, and reads the
        head the last appender committed; the lock is held while the server works, never
        while it waits for this process (at the full range the backend holding it had
        waited for its appender half the time, benchmarks/README.md, "The eighteenth
        stop"; the driver's pipeline still sent each statement as it was made, the
        insert's arrays dumped after the lock, "The nineteenth stop").

        Everything is sent before any answer is read, so a failure may come after the
        ``COMMIT`` was run: the append is never made twice. A connection the server has
        closed since its last use (a restart) has something to read before anything is
        sent, and is replaced first."""
        if self._conn is not None and (
            self._losses != self.db.losses or _closed_by_server(self._conn.driver_connection)
        ):
            self._drop(None)  # ended by the server, or made before one was found lost
        driver = self._connection().driver_connection
        values = _chained_params(made, driver.info.encoding)
        try:
            self._committing = True
            results = _pipelined(
                driver, self._prepared is not driver, values, answers.answer_limit(self.db.wait)
            )
            self._prepared = driver
            seq, head, mark, before = (v.decode() for v in _first_row(results[-2]))
            _check_links(made[0], before, int(seq), head)
            self.tail = int(seq) - int(mark)
            return int(seq), head
        except answers.NoAnswer:
            # lost without a word: so, likely, are the pool's idle connections, whose
            # ping before use (a checkpoint's read of the head) would wait for good
            self._drop(None)
            self.db.lost()
            raise
        except Exception:
            self._drop(None)
            raise

    def settle(self) -> int:
        """Write the tail of the trail into the patient index as one sorted block if it
        has reached ``block`` events; how many events the block covered (0: none was
        due, or another appender wrote it first). The block is written in a transaction
        of its own under the block writers' lock (``_lock_blocks``), after checking that
        the last block is still the one read, so never the same block twice, whichever
        process writes it. On SQLite that lock is the append lock: the tail's rows are
        read before it is taken (committed rows never change), so the other appenders
        wait only for the block's writes (at the full range the read had held them
        30-47 ms a block, benchmarks/README.md, "The search's stalls"). On PostgreSQL
        appends never wait for it, and the server copies the rows itself in one
        statement (``block_sql``): none of the 4,096 pairs passes through this process
        (they had cost the writer child a tenth of its CPU at the full range).
        Called after a batch's answer, not before it (``audit.writer``). The first call
        looks at the database itself (a block due when a writer stopped is written
        then). Nothing is lost if it never runs: searches scan the tail's rows."""
        if self.tail is not None and self.tail < self.block:
            return 0
        cur = self._connection().cursor()
        sqlite = self.db.is_sqlite
        try:
            cur.execute("BEGIN")  # one view of the mark, the head and the rows between
            cur.execute(MARK_SQL)
            lo = int(cur.fetchone()[0])
            cur.execute(HEAD_SQL)
            hi = int(cur.fetchone()[0])
            pairs: list[tuple[Any, ...]] = []
            if sqlite and hi - lo >= self.block:
                cur.execute(block_rows_sql(lo, hi))
                pairs = [(hi, patient, seq) for patient, seq in cur.fetchall()]
            cur.execute("COMMIT")
            if hi - lo < self.block:
                self.tail = hi - lo
                return 0
            self._lock_blocks(cur)
            cur.execute(MARK_SQL)
            if int(cur.fetchone()[0]) != lo:  # another appender wrote this block meanwhile
                cur.execute("COMMIT")
                self._unlock()
                self.tail = None  # looked at afresh next time
                return 0
            if not sqlite:  # the rows copied by the server: appends never wait for it
                for statement in block_sql(lo, hi):
                    cur.execute(statement)
            else:
                if pairs:
                    cur.executemany(self._index_insert, pairs)
                cur.execute(block_mark_sql(lo, hi))
            cur.execute("COMMIT")
            self._unlock()
            self.tail = None  # the head may have moved on: the next append counts it
            return hi - lo
        except Exception:
            self._drop(cur)
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def close(self) -> None:
        """Release the append connection. It is closed, not given back to the pool: it
        runs without the driver's transactions (and, on SQLite, syncing every commit),
        and a connection the pool handed out like that would commit each statement of
        someone's transaction on its own."""
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                self._conn.invalidate()
            self._conn = None
        self._close_turn()

    def rows(self) -> Iterator[AuditRow]:
        """Every row in sequence order (for verification), each event's bytes whole."""
        c = audit_events.c
        with self.db.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(
                sa.select(
                    c.seq,
                    c.recorded,
                    c.patient_id,
                    c.outcome,
                    c.event,
                    c.prev_hash,
                    c.hash,
                    c.agent,
                    c.chain,
                    audit_parts.c.fragments,
                )
                .select_from(with_parts())
                .order_by(c.seq)
            )
            for r in result:
                event = whole_event(_bytes(r[4]), None if r[9] is None else _bytes(r[9]))
                yield AuditRow(r[0], r[1], r[2], r[3], event, r[5], r[6], r[7], int(r[8]))

    def index_problems(self) -> list[tuple[int, str]]:
        """Where the patient index disagrees with the rows: (seq, what), in order."""
        with self.db.engine.connect() as conn:
            return index_problems(conn)

    def head(self) -> tuple[int, str]:
        """The last sequence number and its hash."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_events.c.seq, audit_events.c.hash)
                .order_by(audit_events.c.seq.desc())
                .limit(1)
            ).first()
        return (row[0], row[1]) if row else (0, GENESIS)


def with_parts() -> sa.Join:
    """The events, each with its shared part where it names one (``whole_event``)."""
    return audit_events.outerjoin(audit_parts, audit_parts.c.seq == audit_events.c.part)


def _bytes(value: Any) -> bytes:
    """A stored value as bytes (text where bytes belong: a tampered type)."""
    return value.encode() if isinstance(value, str) else bytes(value)


#: PostgreSQL: a batch's shared parts and rows as one statement, their columns as arrays
#: (``_unchained``'s order), chained there: the head read (after the append lock, taken
#: by the statement before it in the same transaction, so its snapshot sees the last
#: appender's commit), each row linked to the one before by ``link`` (``links``, one row
#: a step: the fields digests come as one string of 32-byte digests), the parts and rows
#: inserted, and the new head with the patient index's mark returned. The appender's
#: process is not waited for while the lock is held: the lock, this and ``COMMIT`` go in
#: one round trip (benchmarks/README.md, "The nineteenth stop").
_CHAINED_INSERT = (
    "WITH RECURSIVE head AS (SELECT coalesce(max(seq), 0) AS seq FROM audit_events),"
    " links (n, seq, hash) AS ("
    "SELECT 0::bigint, h.seq, coalesce((SELECT e.hash FROM audit_events e WHERE e.seq = h.seq),"
    " repeat('0', 64))::text FROM head h"
    " UNION ALL SELECT n + 1, seq + 1, encode(sha256(convert_to(hash || '|' || (seq + 1)::text"
    " || '|' || encode(substring($1::bytea FROM (n * 32 + 1)::int FOR 32), 'hex'),"
    " 'UTF8')), 'hex') FROM links WHERE (n + 1) * 32 <= octet_length($1::bytea)),"
    " batch AS (SELECT * FROM unnest($2::varchar[], $3::varchar[],"
    " $4::varchar[], $5::text[], $6::bytea[], $7::int[])"
    " WITH ORDINALITY AS r (recorded, patient_id, outcome, agent, event, at, n)),"
    " parts AS (INSERT INTO audit_parts (seq, fragments) SELECT h.seq + 1 + p.at, p.fragments"
    " FROM head h, unnest($8::int[], $9::bytea[]) AS p (at, fragments)),"
    " added AS (INSERT INTO audit_events (seq, recorded, patient_id, outcome, event, prev_hash,"
    " hash, agent, chain, part) SELECT l.seq, r.recorded, r.patient_id, r.outcome, r.event,"
    " b.hash, l.hash, r.agent, $10, h.seq + 1 + r.at FROM batch r"
    " JOIN links l ON l.n = r.n JOIN links b ON b.n = r.n - 1 CROSS JOIN head h"
    " RETURNING seq, hash)"
    " SELECT seq, hash, (SELECT coalesce(max(block), 0) FROM audit_index_blocks),"
    " (SELECT hash FROM links WHERE n = 0) FROM added ORDER BY seq DESC LIMIT 1"
)


def _empty(cur: Any) -> tuple[int, str, int]:
    """The head of an empty trail, and the patient index's mark read on its own."""
    cur.execute(MARK_SQL)
    return 0, GENESIS, int(cur.fetchone()[0])


#: an event made for the chain, but for its place in it: (recorded, patient id,
#: outcome, agent, the bytes stored, the index in its batch of the event whose seq names
#: its shared part (None: stored whole), its ``fields_digest``)
Unchained = tuple[str, str | None, str, str | None, bytes, int | None, bytes]


def _unchained(
    events: Sequence[EventRow],
) -> tuple[list[Unchained], list[tuple[int, bytes]]]:
    """What ``_chained`` stores of ``events`` that does not depend on the head: each
    event's stored bytes and fields digest, and the shared parts the batch's events
    stored in part name (each once, with the index in the batch of the first to name
    it). An event stored in part is never made whole: its digest goes on from its part's
    first fragment's, hashed once a part (the SHA-256 of the bytes in turn is the
    SHA-256 of the whole)."""
    made: list[Unchained] = []
    parts: list[tuple[int, bytes]] = []
    #: each part seen: the index of the first event to name it and its first fragment's
    #: hash so far (None: its pieces hold ``SEP``, so its events are stored whole)
    named: dict[tuple[bytes, ...], tuple[int, Any] | None] = {}
    add = made.append
    sha256 = hashlib.sha256
    for at, (recorded, patient_id, outcome, agent, body) in enumerate(events):
        part = None
        if isinstance(body, bytes):
            stored = body
            digest = sha256(body).hexdigest()
        else:
            fragments, fills = body
            if len(fragments) != len(fills) + 1:
                raise ValueError("an event's pieces do not fit its shared part")
            if fragments in named:
                seen = named[fragments]
            elif any(SEP in f for f in fragments):
                seen = named[fragments] = None  # not to be told apart from its pieces: whole
            else:
                seen = named[fragments] = (at, sha256(fragments[0]))
                parts.append((at, SEP.join(fragments)))
            stored = SEP.join(fills)
            if seen is None or stored.count(SEP) != len(fills) - 1:  # a piece holds SEP
                stored = _interleave(fragments, fills)
                digest = sha256(stored).hexdigest()
            else:
                part, h = seen[0], seen[1].copy()
                for fill, fragment in zip(fills, fragments[1:], strict=True):
                    h.update(fill)
                    h.update(fragment)
                digest = h.hexdigest()
        fields = fields_digest(recorded, patient_id, outcome, agent, digest)
        add((recorded, patient_id, outcome, agent, stored, part, fields))
    return made, parts


def _chained(
    head: tuple[Any, ...], unchained: tuple[list[Unchained], list[tuple[int, bytes]]]
) -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes]], int, str, int]:
    """The rows to insert after ``head`` (its seq, hash and the index's mark), each
    chained to the one before by ``link``, and the shared parts they name, each under
    the seq of the first event to name it (``_unchained``); the last seq and hash, and
    the mark (SQLite's append: PostgreSQL's chains in ``_CHAINED_INSERT``)."""
    seq, prev, mark = head
    first = seq + 1  # the seq of the batch's first event
    made, named = unchained
    rows: list[tuple[Any, ...]] = []
    add = rows.append
    for recorded, patient_id, outcome, agent, stored, at, fields in made:
        seq += 1
        part = None if at is None else first + at
        h = link(prev, seq, fields)
        add((seq, recorded, patient_id, outcome, stored, prev, h, agent, CHAIN, part))
        prev = h
    return rows, [(first + at, fragments) for at, fragments in named], seq, prev, int(mark)


def _check_links(made: list[Unchained], before: str, last: int, head: str) -> None:
    """That the server linked the batch as ``link`` does, from the hash before it: an
    ``AuditError`` if not (the rows are committed: ``audit verify`` names them). The
    head a checkpoint signs is then one this process has checked, not only one the
    database said; ~1 us a row."""
    h = before
    for at, row in enumerate(made, start=last - len(made) + 1):
        h = link(h, at, row[6])
    if h != head:
        raise AuditError("audit trail: the database linked the appended events otherwise")


#: ``_CHAINED_INSERT``'s parameters' types: bytea, text[] (four), bytea[], int4[] (two),
#: bytea[], int4; each sent in binary, encoded here (``_chained_params``)
_CHAINED_TYPES = [17, 1009, 1009, 1009, 1009, 1001, 1007, 1007, 1001, 23]
_CHAINED_NAME = b"carelink_append"
_INT = struct.Struct(">i")
_NULL = b"\xff\xff\xff\xff"


def _chained_params(
    unchained: tuple[list[Unchained], list[tuple[int, bytes]]], encoding: str
) -> list[bytes]:
    """``_CHAINED_INSERT``'s parameters, each in PostgreSQL's binary format, made before
    anything is sent: the lock is then held only while the server works (the driver's
    cursor dumped the arrays, element by element, between sending the lock and the insert:
    the backend held the lock waiting for them)."""
    made, parts = unchained
    recorded, patient, outcome, agent, event, at, fields = zip(*made, strict=True)

    def text(values: Sequence[str | None]) -> bytes:
        return _array(25, values, lambda v: v.encode(encoding))

    return [
        b"".join(fields),
        text(recorded),
        text(patient),
        text(outcome),
        text(agent),
        _array(17, event),
        _array(23, at, _INT.pack),
        _array(23, [a for a, _ in parts], _INT.pack),
        _array(17, [f for _, f in parts]),
        _INT.pack(CHAIN),
    ]


def _array(
    element: int, items: Sequence[Any], encode: Callable[[Any], bytes] | None = None
) -> bytes:
    """A one-dimensional array in PostgreSQL's binary format: dimensions, whether it holds
    a NULL, the elements' type, its length and lower bound, then each element's length
    (-1: NULL) and bytes (each item as ``encode`` makes it, each distinct item once: a
    batch's events share their request's time, outcome and user; or bytes as they are)."""
    if not items:
        return struct.pack(">iiI", 0, 0, element)
    pack = _INT.pack
    if encode is None:  # bytes, each its own (an event's, a part's)
        head = struct.pack(">iiIii", 1, None in items, element, len(items), 1)
        return head + b"".join([_NULL if i is None else pack(len(i)) + i for i in items])
    cells = {i: _NULL if i is None else pack(len(b := encode(i))) + b for i in set(items)}
    head = struct.pack(">iiIii", 1, None in cells, element, len(items), 1)
    return head + b"".join([cells[i] for i in items])


def _pipelined(driver: Any, prepare: bool, values: list[bytes], limit: float | None) -> list[Any]:
    """``BEGIN``, the lock, (the insert prepared, when ``prepare``), the insert with
    ``values`` and ``COMMIT`` on ``driver``'s libpq connection in pipeline mode, written
    at once; the results, in order (the prepare's left out), all within ``limit`` seconds
    (``answers.NoAnswer`` past it). The server's first error is the driver's exception,
    once every result is in; a connection lost is ``OperationalError``."""
    pg = driver.pgconn
    pg.enter_pipeline_mode()
    try:
        pg.send_query_params(b"BEGIN", None)
        pg.send_query_params(_LOCK_SQL.encode(), None)
        if prepare:
            pg.send_prepare(_CHAINED_NAME, _CHAINED_INSERT.encode(), _CHAINED_TYPES)
        pg.send_query_prepared(_CHAINED_NAME, values, [1] * len(values), 0)
        pg.send_query_params(b"COMMIT", None)
        pg.pipeline_sync()
        results = answers.results(pg, limit, pipeline=True)
    finally:
        with contextlib.suppress(Exception):  # a connection lost: dropped by the caller
            pg.exit_pipeline_mode()
    done, rows = ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK
    wanted = [done, rows, *([done] if prepare else []), rows, done]
    for result, status in zip(results, wanted, strict=False):
        if result.status != status:
            if pg.status == ConnStatus.BAD:
                message = result.get_error_message(driver.info.encoding)
                raise psycopg.OperationalError(message or "the connection was lost")
            raise error_from_result(result, driver.info.encoding)
    if len(results) != len(wanted):
        raise psycopg.OperationalError("the audit append's results did not all come")
    return results


def _first_row(result: Any) -> list[bytes]:
    """A result's first row's values, as the text the server wrote."""
    return [result.get_value(0, c) for c in range(result.nfields)]


def _closed_by_server(driver: Any) -> bool:
    """Whether an idle PostgreSQL connection has something to read: between appends the
    server sends nothing unless it is ending the connection (a restart, a terminated
    backend), so it is not to be used (a notice would only cost a new connection)."""
    try:
        return answers.ready(driver.pgconn.socket, select.POLLIN, 0)
    except Exception:  # the socket is gone already (psycopg's error, or the OS's)
        return True


def _turn_file(driver: Any) -> int | None:
    """The appenders' lock file beside this SQLite connection's database file, opened
    (None for a database without a file: in memory, or temporary)."""
    path = next((row[2] for row in driver.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:
        return None
    return os.open(f"{path}-audit-turn", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
