"""The audit trail's patient index, written in sorted blocks (``storage.audit_blocks``):
searches by patient answer exactly what a scan of the rows answers, for events in the
tail, in blocks and across their boundaries, with two writer processes at once; a
tampered index is found by verification and cannot add an answer; the index is
derived (nothing is lost when its block was never written); an append writes none of it.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.audit import Access, AuditTrail, Who, audit_event, verify, verify_index
from carelink.audit.events import columns
from carelink.storage import Database
from carelink.storage.audit_search import AuditQuery, AuditSearch, _where
from carelink.storage.audit_store import AuditRow, AuditStore, NewEvent
from tests.audit.test_trail import event

PATIENTS = ("p1", "p2", "p3", "p4")
AGENTS = ("u1", "u2")


def _row(n: int, patient: str | None, agent: str, outcome: str) -> NewEvent:
    """An AuditEvent as the gateway makes it, with its columns."""
    recorded = f"2026-01-{1 + n % 5:02d}T00:00:00.{n:06d}Z"
    access = Access("read", f"/fhir/Patient/{patient}", f"req-{n}", recorded, "b")
    e = audit_event(access, Who(agent, "R8000", "RXX01", "TREAT"), patient, outcome)
    return NewEvent(*columns(e), orjson.dumps(e))


def _matches(r: AuditRow, q: AuditQuery) -> bool:
    if q.patient is not None and r.patient_id != q.patient:
        return False
    if q.agent is not None and (r.agent is None or orjson.loads(r.agent)[0] != q.agent):
        return False  # every row here names its user whole: subject, then issuer
    if q.outcomes and r.outcome not in q.outcomes:
        return False
    return all(
        any((lo is None or r.recorded >= lo) and (hi is None or r.recorded < hi) for lo, hi in s)
        for s in q.recorded
    )


def _scanned(store: AuditStore, q: AuditQuery, before: int | None = None) -> list[int]:
    """The oracle: every row read in order and held to the query in Python."""
    seqs = [r.seq for r in store.rows() if _matches(r, q)]
    return sorted((s for s in seqs if before is None or s < before), reverse=True)


def _walk(search: AuditSearch, q: AuditQuery, size: int) -> list[int]:
    seen: list[int] = []
    before = None
    while page := search.page(q, size, before):
        seen += [seq for seq, _ in page]
        before = page[-1][0]
    return seen


def _blocks(db: Database) -> list[tuple[int, int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT first_seq, block FROM audit_index_blocks ORDER BY 1"))
        return [(int(a), int(b)) for a, b in rows]


@pytest.fixture
def trail(database_url):
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    store.block = 5  # small blocks: many of them, and many boundaries, in a few events
    yield store, AuditSearch(db)
    store.close()
    db.dispose()


queries = st.builds(
    AuditQuery,
    patient=st.sampled_from(PATIENTS),
    agent=st.none() | st.sampled_from(AGENTS),
    outcomes=st.sampled_from([(), ("0",), ("4",), ("0", "4")]),
    recorded=st.sampled_from(
        [(), ((("2026-01-02", "2026-01-04"),),), ((("2026-01-03", None), (None, "2026-01-02")),)]
    ),
)
batches = st.lists(
    st.tuples(
        st.none() | st.sampled_from(PATIENTS), st.sampled_from(AGENTS), st.sampled_from("04")
    ),
    min_size=1,
    max_size=9,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    appends=st.lists(st.tuples(batches, st.booleans()), min_size=1, max_size=6),
    q=queries,
    size=st.integers(1, 6),
)
def test_search_by_patient_answers_what_a_scan_of_the_rows_answers(trail, appends, q, size):
    """The trail grows over the examples: events in the tail, in blocks written after
    some appends and not others (a block not yet written is the tail), and pages whose
    keyset falls on either side of a block's edge."""
    store, search = trail
    for batch, settle in appends:
        head = store.head()[0]
        store.append([_row(head + i + 1, *cols) for i, cols in enumerate(batch)])
        if settle:
            store.settle()
    expected = _scanned(store, q)
    assert search.count(q) == len(expected)
    assert _walk(search, q, size) == expected
    if expected:
        middle = expected[len(expected) // 2]
        assert [s for s, _ in search.page(q, 100, middle)] == _scanned(store, q, middle)
    assert store.index_problems() == []


def test_an_append_writes_no_index_and_a_due_tail_becomes_one_sorted_block(trail):
    store, search = trail
    store.append([_row(i, PATIENTS[i % 4], "u1", "0") for i in range(1, 5)])
    assert store.settle() == 0  # 4 events: not due
    assert _blocks(store.db) == []
    store.append([_row(i, PATIENTS[i % 4], "u1", "0") for i in range(5, 8)])
    assert store.settle() == 7
    assert _blocks(store.db) == [(1, 7)]
    with store.db.engine.connect() as conn:
        keys = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM audit_patient_index"))]
    assert sorted(keys) == sorted((7, PATIENTS[i % 4], i) for i in range(1, 8))
    store.append([_row(8, "p1", "u1", "0")])
    assert _blocks(store.db) == [(1, 7)]  # the next append leaves the index alone
    assert _walk(search, AuditQuery(patient="p1"), 2) == [8, 4]


def test_events_whose_block_was_never_written_are_found_and_indexed_later(trail):
    """A crash between an event's commit and its block's: the rows are the truth, the
    tail is scanned, and the next writer to settle writes the block."""
    store, search = trail
    store.append([_row(i, "p2", "u1", "0") for i in range(1, 13)])  # never settled
    store.close()
    again = AuditStore(store.db)
    again.block = 5
    assert search.count(AuditQuery(patient="p2")) == 12
    again.append([_row(13, "p2", "u2", "0")])
    assert again.settle() == 13
    assert _blocks(store.db) == [(1, 13)]
    assert _walk(search, AuditQuery(patient="p2"), 5) == list(range(13, 0, -1))
    again.close()


def _tampered(store: AuditStore) -> None:
    store.append([_row(i, "p1" if i % 2 else "p2", "u1", "0") for i in range(1, 11)])
    store.settle()
    with store.db.engine.begin() as conn:  # p1's event 3 is said to be p2's
        conn.execute(sa.text("UPDATE audit_patient_index SET patient_id = 'p2' WHERE seq = 3"))


def test_an_index_row_naming_the_wrong_patient_adds_no_answer_and_is_found(trail):
    store, search = trail
    _tampered(store)
    assert _walk(search, AuditQuery(patient="p2"), 3) == [10, 8, 6, 4, 2]
    assert search.count(AuditQuery(patient="p2")) == 5
    found = [
        (3, "patient index names an event that is not this one"),
        (3, "event is missing from the patient index"),
    ]
    assert store.index_problems() == found
    assert [(f.seq, f.problem) for f in verify_index(store)] == found
    assert verify(store.rows()) == []  # the rows themselves are intact


@pytest.mark.parametrize(
    ("statement", "problems"),
    [
        (
            "DELETE FROM audit_patient_index WHERE seq = 4",
            [(4, "event is missing from the patient index")],
        ),
        (
            "UPDATE audit_patient_index SET seq = 5 WHERE seq = 4",
            [
                (5, "patient index names an event that is not this one"),
                (4, "event is missing from the patient index"),
            ],
        ),
        (
            "UPDATE audit_index_blocks SET first_seq = 2",
            [
                (10, "patient index block does not follow the one before it"),
                (1, "patient index names an event that is not this one"),
            ],
        ),
    ],
)
def test_an_index_row_deleted_or_moved_is_found(trail, statement, problems):
    store, _ = trail
    store.append([_row(i, "p1" if i % 2 else "p2", "u1", "0") for i in range(1, 11)])
    store.settle()
    with store.db.engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert store.index_problems() == problems


def test_an_indexed_event_moved_to_another_patient_is_found(trail):
    store, _ = trail
    AuditTrail(store).record([event(i) for i in range(8)])
    assert store.settle() == 8
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET patient_id = 'p9' WHERE seq = 2"))
    assert (2, "patient_id differs from its event (edited)") in {
        (f.seq, f.problem) for f in verify(store.rows())
    }
    assert store.index_problems() == [
        (2, "patient index names an event that is not this one"),
        (2, "event is missing from the patient index"),
    ]


def _writer(url: str, name: str, batches: int) -> None:
    db = Database(url)
    store = AuditStore(db)
    store.block = 7
    for b in range(batches):
        store.append([_row(b * 10 + i, PATIENTS[(b + i) % 4], name, "0") for i in range(1 + b % 4)])
        store.settle()
    store.close()
    db.dispose()


def test_two_writer_processes_at_once(trail):
    store, search = trail
    url = store.db.url
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_writer, args=(url, name, 40)) for name in AGENTS]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    blocks = _blocks(store.db)
    assert len(blocks) > 5
    assert [a for a, _ in blocks] == [1] + [b + 1 for _, b in blocks[:-1]]
    assert store.index_problems() == []
    assert verify(store.rows()) == []
    for patient in PATIENTS:
        for agent in (None, *AGENTS):
            q = AuditQuery(patient=patient, agent=agent)
            expected = _scanned(store, q)
            assert search.count(q) == len(expected)
            assert _walk(search, q, 4) == expected


def test_sqlite_seeks_each_block_for_the_patient_and_never_reads_the_whole_index(tmp_path):
    """With one block (the migration makes one of the whole trail) the planner would
    rather scan the index than look the patient up; the blocks drive the seeks."""
    db = Database(str(tmp_path / "plan.db"))
    db.migrate()
    store = AuditStore(db)
    store.block = 3
    store.append([_row(i, PATIENTS[i % 4], "u1", "0") for i in range(1, 9)])
    store.settle()
    stmt = sa.select(sa.literal(1)).where(*_where(AuditQuery(patient="p1", agent="u1")))
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as conn:
        plan = [str(r[3]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    store.close()
    db.dispose()
    assert "SEARCH audit_patient_index USING PRIMARY KEY (block=? AND patient_id=?)" in plan
    assert not [step for step in plan if step.startswith("SCAN")]


@pytest.mark.postgres
def test_on_postgresql_a_block_is_written_in_one_statement(postgres_url):
    """The block's pairs go in as one statement, not one a pair: the append lock is held
    while they are written, and 4,096 statements had held it 32-110 ms a block at the full
    range (benchmarks/README.md, "The search's stalls on PostgreSQL"). Counted by a
    statement-level trigger on the table."""
    db = Database(postgres_url)
    db.migrate()
    store = AuditStore(db)
    store.block = 7
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE statements (n integer NOT NULL)"))
        conn.execute(sa.text("INSERT INTO statements VALUES (0)"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN UPDATE statements SET n = n + 1; RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER counted AFTER INSERT ON audit_patient_index "
                "FOR EACH STATEMENT EXECUTE FUNCTION count_statement()"
            )
        )
    try:
        store.append([_row(i, PATIENTS[i % 4], "u1", "0") for i in range(1, 9)])
        assert store.settle() == 8
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT n FROM statements")).scalar_one() == 1
            keys = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM audit_patient_index"))]
        assert keys == sorted((8, PATIENTS[i % 4], i) for i in range(1, 9))
        assert store.index_problems() == []
    finally:
        store.close()
        db.dispose()


@pytest.mark.postgres
def test_on_postgresql_appends_go_on_while_a_block_is_written(postgres_url):
    """A block is written under a lock of block writers only, which an append never takes:
    with one writer's block held mid-statement (its insert waits, by a trigger, for a lock
    this test holds), another writer's appends are stored and answered; then the block
    ends, and the blocks follow each other, the index matches the rows and the chain
    verifies. Under the append lock the appends would wait for the block, which waits for
    this test: they never finish and the test fails (after 20 s)."""
    db = Database(postgres_url)
    db.migrate()
    key = uuid.uuid4().int % 2**62  # an advisory lock of this test's own
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION held_here() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER held BEFORE INSERT ON audit_patient_index "
                "FOR EACH STATEMENT EXECUTE FUNCTION held_here()"
            )
        )
    blocking, other = AuditStore(db), AuditStore(db)
    blocking.block = other.block = 6
    holder = db.engine.connect()
    holder.execute(sa.text(f"SELECT pg_advisory_lock({key})"))
    settled: list[int] = []
    appended: list[tuple[int, str]] = []
    rows = [[_row(i, PATIENTS[i % 4], "u2", "0") for i in range(n, n + 3)] for n in (9, 12)]
    settler = threading.Thread(target=lambda: settled.append(blocking.settle()))
    appender = threading.Thread(target=lambda: appended.extend(other.append(r) for r in rows))
    try:
        blocking.append([_row(i, PATIENTS[i % 4], "u1", "0") for i in range(1, 9)])
        settler.start()
        with db.engine.connect() as conn:  # the block's insert is waiting for this test
            for _ in range(400):
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())"
                    )
                ).scalar_one()
                if waiting:
                    break
                time.sleep(0.05)
            assert waiting
        appender.start()
        appender.join(20)
        assert not appender.is_alive()
        assert [seq for seq, _ in appended] == [11, 14]
        assert settler.is_alive()  # the block is still being written
        assert not settled
    finally:
        holder.execute(sa.text(f"SELECT pg_advisory_unlock({key})"))
        holder.close()
        for thread in (settler, appender):
            if thread.ident is not None:
                thread.join(20)
    assert settled == [8]
    assert other.settle() == 6  # events 9-14, after the block of 1-8
    assert _blocks(db) == [(1, 8), (9, 14)]
    assert blocking.index_problems() == []
    assert verify(blocking.rows()) == []
    blocking.close()
    other.close()
    db.dispose()
