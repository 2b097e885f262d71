"""The audit trail's patient index as derived data, written in sorted blocks.

Searching the trail by patient needs an index on (patient, seq). Kept as an
ordinary index on ``audit_events``, every append put one random leaf page of
it per event into the commit (a 4 KB WAL frame on SQLite, copied again at
checkpoint): about half of the writer's disk work on a large trail. Instead,
``audit_patient_index`` is filled from the rows in blocks: once the events past
the last block (the tail) number ``BLOCK`` or more, they are copied in one
statement, sorted by patient, under a block number that sorts after every
earlier block's (the block's last sequence number), so the index only ever
grows at its right edge, densely.

A search by patient reads one range per block (``patient_seqs``) and scans the
tail's rows, and always holds the rows it finds to the patient asked for: an
index row naming the wrong event can never add an answer; one missing or
altered can hide one, and ``audit verify`` compares the index with the rows
(``index_problems``). The index is derived: the tail is found from the rows
themselves, so an event committed before its block was written (a crash in
between) is found by the scan until the next block is written.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carelink.storage.tables import audit_events, audit_index_blocks, audit_patient_index

#: how many events the tail reaches before it is written as a block
BLOCK = 4096

MARK_SQL = "SELECT coalesce(max(block), 0) FROM audit_index_blocks"
HEAD_SQL = "SELECT coalesce(max(seq), 0) FROM audit_events"


def block_sql(lo: int, hi: int) -> tuple[str, str]:
    """The two statements that index events ``lo`` + 1 .. ``hi`` as one block (run under
    the block writers' lock, in one transaction, with ``lo`` the last block read in it:
    the migration, and ``AuditStore.settle`` on PostgreSQL)."""
    lo, hi = int(lo), int(hi)  # literals of our own making, never input
    return (
        "INSERT INTO audit_patient_index (block, patient_id, seq) "  # noqa: S608
        f"SELECT {hi}, patient_id, seq FROM audit_events WHERE seq > {lo} AND seq <= {hi} "
        "AND patient_id IS NOT NULL ORDER BY patient_id, seq",
        block_mark_sql(lo, hi),
    )


def block_rows_sql(lo: int, hi: int) -> str:
    """The (patient, seq) pairs of the block of events ``lo`` + 1 .. ``hi``, in the order
    they are indexed: what ``block_sql`` copies, read on its own (``AuditStore.settle``
    reads them before taking the append lock)."""
    lo, hi = int(lo), int(hi)
    return (
        "SELECT patient_id, seq FROM audit_events "  # noqa: S608
        f"WHERE seq > {lo} AND seq <= {hi} AND patient_id IS NOT NULL ORDER BY patient_id, seq"
    )


def block_mark_sql(lo: int, hi: int) -> str:
    """The block's own row: it ends at ``hi`` and starts after ``lo``."""
    lo, hi = int(lo), int(hi)
    return f"INSERT INTO audit_index_blocks (block, first_seq) VALUES ({hi}, {lo + 1})"  # noqa: S608


def index_all(conn: Connection) -> int:
    """Index every event past the last block as one block, whatever its size (the
    migration); how many events it covered."""
    lo = int(conn.exec_driver_sql(MARK_SQL).scalar_one())
    hi = int(conn.exec_driver_sql(HEAD_SQL).scalar_one())
    if hi <= lo:
        return 0
    for statement in block_sql(lo, hi):
        conn.exec_driver_sql(statement)
    return hi - lo


def indexed_upto(conn: Connection) -> int:
    """The last event in a block (0: none). Read before a search, in a statement of its
    own: a later block only makes the search's tail scan longer than it need be, never
    miss an event (blocks and the mark only grow), and the planner then sees the bound
    (PostgreSQL scanned the whole trail for ``seq > (SELECT max(block) ...)``)."""
    return int(conn.exec_driver_sql(MARK_SQL).scalar_one())


def patient_seqs(patient: str, mark: int, before: int | None = None) -> sa.Select[tuple[int]]:
    """The sequence numbers said to be ``patient``'s: one range per block, and the rows
    after ``mark`` (``indexed_upto``) scanned. A candidate list only: the caller holds
    each row to the patient."""
    i, b = audit_patient_index.c, audit_index_blocks.c
    tail = audit_events.alias("tail")
    # the blocks drive: one seek of (block, patient) each, whatever the planner's statistics
    indexed = sa.select(i.seq).where(i.block.in_(sa.select(b.block)), i.patient_id == patient)
    scanned = sa.select(tail.c.seq).where(tail.c.seq > mark, tail.c.patient_id == patient)
    if before is not None:
        indexed = indexed.where(i.seq < before)
        scanned = scanned.where(tail.c.seq < before)
    return sa.union_all(indexed, scanned)  # type: ignore[return-value]


def index_problems(conn: Connection) -> list[tuple[int, str]]:
    """Where the patient index disagrees with the rows it is derived from: (seq, what)."""
    out: list[tuple[int, str]] = []
    expected_first = 1
    for block, first in conn.exec_driver_sql(
        "SELECT block, first_seq FROM audit_index_blocks ORDER BY block"
    ):
        if first != expected_first or block < first:
            out.append((int(block), "patient index block does not follow the one before it"))
        expected_first = int(block) + 1
    wrong = conn.exec_driver_sql(
        "SELECT i.seq FROM audit_patient_index i "
        "LEFT JOIN audit_events e ON e.seq = i.seq "
        "LEFT JOIN audit_index_blocks b ON b.block = i.block "
        "WHERE e.seq IS NULL OR e.patient_id IS NULL OR e.patient_id <> i.patient_id "
        "OR b.block IS NULL OR i.seq < b.first_seq OR i.seq > b.block ORDER BY i.seq"
    )
    out += [(int(r[0]), "patient index names an event that is not this one") for r in wrong]
    # each event's block is the first ending at or after it (the blocks were checked to
    # follow each other above): one seek, not a range join over every block
    missing = conn.exec_driver_sql(
        "SELECT e.seq FROM audit_events e "
        "WHERE e.patient_id IS NOT NULL "
        "AND e.seq <= (SELECT coalesce(max(block), 0) FROM audit_index_blocks) "
        "AND NOT EXISTS (SELECT 1 FROM audit_patient_index i WHERE i.block = "
        "(SELECT min(b.block) FROM audit_index_blocks b WHERE b.block >= e.seq) "
        "AND i.patient_id = e.patient_id AND i.seq = e.seq) ORDER BY e.seq"
    )
    out += [(int(r[0]), "event is missing from the patient index") for r in missing]
    return out
