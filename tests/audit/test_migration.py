"""A trail stored before migration 9 (hashes over the event only) still verifies after it,
new records carry hashes over every column, and old records are still held to their
events' contents (so moving one to another patient is found)."""

from __future__ import annotations

import hashlib
import uuid

import orjson
import pytest
import sqlalchemy as sa

from carelink.audit import AuditTrail, verify
from carelink.audit.events import Access, RequestEvents, Who, audit_event, columns, legacy_agent
from carelink.auth.local_issuer import LOCAL_ISSUER
from carelink.storage import Database
from carelink.storage.audit_search import AuditQuery, AuditSearch
from carelink.storage.audit_store import (
    CHAIN,
    GENESIS,
    AuditRow,
    AuditStore,
    NewEvent,
    agent_key,
    chain_hash,
)
from carelink.storage.migrations import MIGRATIONS
from carelink.storage.tables import audit_events
from tests.audit.test_trail import event

UPGRADE = next(n for n, d, _ in MIGRATIONS if d.startswith("audit trail: agent column"))
LEGACY = """CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, recorded VARCHAR(40) NOT NULL,
patient_id VARCHAR(64), outcome VARCHAR(2) NOT NULL, event {blob} NOT NULL,
prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)"""


def _legacy_trail(db: Database, n: int) -> None:
    blob = "BLOB" if db.is_sqlite else "BYTEA"
    with db.engine.begin() as conn:
        conn.execute(sa.text(LEGACY.format(blob=blob)))
        conn.execute(sa.text("CREATE TABLE audit_lock (id INTEGER PRIMARY KEY, appends INTEGER)"))
        conn.execute(sa.text("INSERT INTO audit_lock VALUES (1, 0)"))
        conn.execute(
            sa.text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT)")
        )
        for v in range(1, UPGRADE):  # everything before the audit upgrade is done
            conn.execute(sa.text("INSERT INTO schema_version VALUES (:v, 'old')"), {"v": v})
        prev = GENESIS
        for seq in range(1, n + 1):
            e = event(seq % 10)
            body = orjson.dumps(e)
            recorded, patient, outcome, _ = columns(e)
            h = chain_hash(prev, seq, body)
            conn.execute(
                sa.text("INSERT INTO audit_events VALUES (:s, :r, :p, :o, :e, :ph, :h)"),
                {
                    "s": seq,
                    "r": recorded,
                    "p": patient,
                    "o": outcome,
                    "e": body,
                    "ph": prev,
                    "h": h,
                },
            )
            prev = h


@pytest.fixture
def upgraded(database_url):
    db = Database(database_url)
    _legacy_trail(db, 4)
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
    yield db
    db.dispose()


def test_an_old_trail_verifies_after_the_upgrade_and_new_records_use_the_new_hash(upgraded):
    store = AuditStore(upgraded)
    assert verify(store.rows()) == []
    AuditTrail(store).record([event(5), event(6)])
    rows = list(store.rows())
    assert [r.chain for r in rows] == [1, 1, 1, 1, CHAIN, CHAIN]
    assert [r.agent for r in rows][-2:] == [agent_key("user-1", ""), agent_key("user-0", "")]
    assert verify(store.rows()) == []


def test_an_old_record_moved_to_another_patient_is_found(upgraded):
    with upgraded.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET patient_id = 'elsewhere' WHERE seq = 2"))
    findings = verify(AuditStore(upgraded).rows())
    assert [(f.seq, f.problem) for f in findings] == [
        (2, "patient_id differs from its event (edited)")
    ]


def test_a_new_record_passed_off_as_an_old_one_is_found(upgraded):
    store = AuditStore(upgraded)
    AuditTrail(store).record([event(5), event(6)])
    with upgraded.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET chain = 1 WHERE seq = 6"))
    problems = [f.problem for f in verify(store.rows()) if f.seq == 6]
    assert "old hash scheme after newer records (downgraded)" in problems


def _audit_indexes(db: Database) -> dict[str, list[str]]:
    with db.engine.connect() as conn:
        found = sa.inspect(conn).get_indexes("audit_events")
    return {str(i["name"]): list(i["column_names"]) for i in found}


def test_a_new_trail_has_no_index_on_the_patient_in_its_rows(database_url):
    """Every append writes a page of each index on the rows: the patient's events are
    found through ``audit_patient_index``, written in sorted blocks instead."""
    db = Database(database_url)
    db.migrate()
    indexes = _audit_indexes(db)
    db.dispose()
    assert not [cols for cols in indexes.values() if "patient_id" in cols]
    assert indexes["ix_audit_events_agent_seq"] == ["agent", "seq"]


def _as_before(db: Database, upto: int) -> None:
    """The trail as migrations up to ``upto`` left it: (patient_id, seq) indexed on the
    rows (and, before 14, patient_id alone), no patient index of blocks."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE audit_patient_index")
        conn.exec_driver_sql("DROP TABLE audit_index_blocks")
        conn.exec_driver_sql(
            "CREATE INDEX ix_audit_events_patient_seq ON audit_events (patient_id, seq)"
        )
        if upto < 14:
            conn.exec_driver_sql(
                "CREATE INDEX ix_audit_events_patient_id ON audit_events (patient_id)"
            )
        conn.execute(sa.text("DELETE FROM schema_version WHERE version > :v"), {"v": upto})


@pytest.mark.parametrize("upto", [13, 14])
def test_an_older_trail_is_migrated_to_blocks_and_the_search_still_finds(database_url, upto):
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    AuditTrail(store).record([event(i) for i in range(6)])
    _as_before(db, upto)
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
    assert "patient_id" not in str(_audit_indexes(db))
    with db.engine.connect() as conn:
        blocks = conn.exec_driver_sql("SELECT first_seq, block FROM audit_index_blocks").all()
    assert [tuple(b) for b in blocks] == [(1, 6)]  # every event stored before, one block
    search = AuditSearch(db)
    found = search.page(AuditQuery(patient="p1"), 10)
    assert [seq for seq, _ in found] == [5, 2]
    assert search.count(AuditQuery(has_patient=True)) == 6
    assert verify(store.rows()) == []
    assert store.index_problems() == []
    AuditTrail(store).record([event(1)])
    assert [seq for seq, _ in search.page(AuditQuery(patient="p1"), 10)] == [7, 5, 2]
    store.close()
    db.dispose()


# --- the agent column before issuers were recorded (migration 17) --------------------

ISSUERS = next(n for n, d, _ in MIGRATIONS if d.startswith("audit trail: the requesting user's"))


def _scheme_2(prev: str, seq: int, cols: tuple[str, str | None, str, str], body: bytes) -> str:
    """A hash as rows before migration 17 carry it (scheme 2: every column, the agent
    the bare subject), written out here as it was, not taken from the code under test."""
    digest = hashlib.sha256(body).hexdigest()
    return hashlib.sha256(orjson.dumps([2, prev, seq, *cols, digest])).hexdigest()


def _trail_before_issuers(db: Database) -> None:
    """Two reads by ``dr-1`` stored as the trail held them before migration 17: the user
    agent without an issuer, the bare subject in ``agent`` (200 characters at most on
    PostgreSQL), scheme 2."""
    db.migrate()
    with db.engine.begin() as conn:
        if not db.is_sqlite:
            conn.exec_driver_sql("ALTER TABLE audit_events ALTER COLUMN agent TYPE varchar(200)")
        conn.execute(sa.text("DELETE FROM schema_version WHERE version >= :v"), {"v": ISSUERS})
        prev = GENESIS
        for seq in (1, 2):
            access = Access("read", "/fhir/Patient/p1", f"r{seq}", f"2026-01-01T00:00:0{seq}Z", "b")
            made = {**audit_event(access, Who("dr-1", "R8000", "RXX01", "TREAT"), "p1", "0")}
            body = orjson.dumps({**made, "id": f"e{seq}"})
            assert b'"identifier":{"value":"dr-1"}' in body  # the old event's shape
            cols = (made["recorded"], "p1", "0", "dr-1")
            h = _scheme_2(prev, seq, cols, body)
            conn.execute(
                audit_events.insert().values(
                    seq=seq,
                    recorded=cols[0],
                    patient_id="p1",
                    outcome="0",
                    event=body,
                    prev_hash=prev,
                    hash=h,
                    agent="dr-1",
                    chain=2,
                )
            )
            prev = h


def test_rows_from_before_issuers_verify_beside_new_ones_and_are_found_by_subject(database_url):
    db = Database(database_url)
    _trail_before_issuers(db)
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
    store = AuditStore(db)
    access = Access("read", "/fhir/Patient/p1", "r3", "2026-01-01T00:00:03Z", "b")
    long_issuer = "https://idp.example/" + "\u00e9" * 300  # over the old column's 200
    for issuer in ("https://idp.example", LOCAL_ISSUER, long_issuer):
        who = Who("dr-1", "R8000", "RXX01", "TREAT", issuer)
        row = RequestEvents(access, who, "0").rows(["p1"], lambda: uuid.uuid4().hex)[0]
        store.append([NewEvent(*row)])
    assert [r.chain for r in store.rows()] == [2, 2, CHAIN, CHAIN, CHAIN]
    assert verify(store.rows()) == []
    search = AuditSearch(db)

    def seqs(**q: str) -> list[int]:
        return [seq for seq, _ in search.page(AuditQuery(patient="p1", **q), 10)]

    assert seqs(agent="dr-1") == [5, 4, 3, 2, 1]  # that subject at any issuer, as always
    assert seqs(agent="dr-1", issuer="https://idp.example") == [3]
    assert seqs(agent="dr-1", issuer=LOCAL_ISSUER) == [4]
    assert seqs(agent="dr-1", issuer=long_issuer) == [5]
    assert seqs(agent="dr-1", issuer="") == [2, 1]  # no issuer known: the rows before
    assert seqs(agent="DR-1") == []
    with db.engine.begin() as conn:  # an old row's agent made to name an issuer
        conn.execute(
            sa.text("UPDATE audit_events SET agent = :a WHERE seq = 1"),
            {"a": agent_key("dr-1", LOCAL_ISSUER)},
        )
    assert [(f.seq, f.problem) for f in verify(store.rows())] == [
        (1, "content does not match its hash (edited)"),
        (1, "agent differs from its event (edited)"),
    ]
    store.close()
    db.dispose()


def test_a_new_row_passed_off_as_one_from_before_issuers_is_found(database_url):
    """A scheme-3 row rewritten as scheme 2 (bare subject, hash recomputed) after other
    scheme-3 rows: a downgrade."""
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    AuditTrail(store).record([event(5), event(6)])
    rows = list(store.rows())
    last = rows[-1]
    body = orjson.loads(last.event)
    cols = (last.recorded, last.patient_id, last.outcome, legacy_agent(body))
    h = _scheme_2(last.prev_hash, last.seq, cols, last.event)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_events SET chain = 2, agent = :a, hash = :h WHERE seq = :s"),
            {"a": cols[3], "h": h, "s": last.seq},
        )
    problems = [f.problem for f in verify(store.rows()) if f.seq == last.seq]
    assert problems == ["old hash scheme after newer records (downgraded)"]
    store.close()
    db.dispose()


def _scheme_3(
    prev: str, seq: int, cols: tuple[str, str | None, str, str | None], body: bytes
) -> str:
    """A hash as rows before chain 4 carry it (every column and the position in one JSON
    array), written out here as it was, not taken from the code under test."""
    digest = hashlib.sha256(body).hexdigest()
    return hashlib.sha256(orjson.dumps([3, prev, seq, *cols, digest])).hexdigest()


def _scheme_4(
    prev: str, seq: int, cols: tuple[str, str | None, str, str | None], body: bytes
) -> str:
    """Chain 4 written out from its definition: the row's own columns hashed apart from
    its place, then linked as ``previous hash|seq|that digest in hex``."""
    digest = hashlib.sha256(body).hexdigest()
    own = hashlib.sha256(orjson.dumps([4, *cols, digest])).hexdigest()
    return hashlib.sha256(f"{prev}|{seq}|{own}".encode()).hexdigest()


def _scheme_3_trail(db: Database, n: int, first: int = 1, prev: str = GENESIS) -> str:
    """``n`` reads stored as the append wrote them before chain 4 (scheme 3), from seq
    ``first`` on after the hash ``prev``; the last one's hash."""
    with db.engine.begin() as conn:
        for seq in range(first, first + n):
            e = {**event(seq), "id": f"old-{seq}"}
            body = orjson.dumps(e)
            cols = columns(e)
            h = _scheme_3(prev, seq, cols, body)
            conn.execute(
                audit_events.insert().values(
                    seq=seq,
                    recorded=cols[0],
                    patient_id=cols[1],
                    outcome=cols[2],
                    event=body,
                    prev_hash=prev,
                    hash=h,
                    agent=cols[3],
                    chain=3,
                )
            )
            prev = h
    return prev


def test_a_scheme_3_trail_takes_scheme_4_rows_made_as_the_scheme_says(database_url):
    """Rows appended after scheme-3 rows carry chain 4, each hash exactly the scheme's
    definition written out here (on PostgreSQL the server makes it, in SQL), and the
    trail verifies across both schemes; a batch of many rows and one of a single row
    both link on."""
    db = Database(database_url)
    db.migrate()
    _scheme_3_trail(db, 3)
    store = AuditStore(db)
    AuditTrail(store).record([event(n) for n in range(4, 40)])
    AuditTrail(store).record([event(40)])
    rows = list(store.rows())
    assert [r.chain for r in rows] == [3] * 3 + [CHAIN] * 37
    assert CHAIN == 4
    prev = rows[2].hash
    for r in rows[3:]:
        assert r.prev_hash == prev
        assert r.hash == _scheme_4(
            prev, r.seq, (r.recorded, r.patient_id, r.outcome, r.agent), r.event
        )
        prev = r.hash
    assert verify(store.rows()) == []
    assert store.head() == (40, prev)
    store.close()
    db.dispose()


@pytest.mark.parametrize(
    ("before", "rewritten", "downgrade"),
    [(4, 2, True), (3, 2, True), (4, 3, False)],
    ids=["4-to-2", "3-to-2", "4-to-3"],
)
def test_a_row_of_a_scheme_covering_less_after_one_covering_more_is_a_downgrade(
    database_url, before, rewritten, downgrade
):
    """The last row rewritten under an older scheme (its hash remade so). As scheme 2
    (the bare subject, no issuer) after scheme-4 or scheme-3 rows it is a downgrade,
    whatever the newest scheme is. As scheme 3 after scheme-4 rows it is not: scheme 3
    covers every column as scheme 4 does (what a gateway of the release before writes
    beside a newer one during an upgrade), and the row verifies."""
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    if before == 4:
        AuditTrail(store).record([event(5), event(6)])
    else:
        _scheme_3_trail(db, 2)
    last = list(store.rows())[-1]
    assert last.chain == before
    body = orjson.loads(last.event)
    if rewritten == 3:
        agent = last.agent
        h = _scheme_3(last.prev_hash, last.seq, (*_own(last)[:3], agent), last.event)
    else:
        agent = legacy_agent(body)
        h = _scheme_2(last.prev_hash, last.seq, (*_own(last)[:3], agent), last.event)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_events SET chain = :c, agent = :a, hash = :h WHERE seq = :s"),
            {"c": rewritten, "a": agent, "h": h, "s": last.seq},
        )
    problems = [f.problem for f in verify(store.rows()) if f.seq == last.seq]
    assert problems == (["old hash scheme after newer records (downgraded)"] if downgrade else [])
    store.close()
    db.dispose()


def _own(row: AuditRow) -> tuple[str, str | None, str, str | None]:
    return (row.recorded, row.patient_id, row.outcome, row.agent)


def test_an_older_gateway_appending_beside_a_newer_one_leaves_a_trail_that_verifies(
    database_url,
):
    """Scheme-3 rows appended after scheme-4 rows, as a gateway of the release before
    (sharing the database during an upgrade) appends them, linked to the head it reads,
    and scheme-4 rows after those again: the trail verifies, rows of either scheme
    edited are found."""
    db = Database(database_url)
    db.migrate()
    store = AuditStore(db)
    AuditTrail(store).record([event(1), event(2)])
    seq, prev = store.head()
    _scheme_3_trail(db, 2, seq + 1, prev)
    AuditTrail(store).record([event(5), event(6)])
    assert [r.chain for r in store.rows()] == [4, 4, 3, 3, 4, 4]
    assert verify(store.rows()) == []
    for edited in (3, 5):
        with db.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE audit_events SET outcome = '8' WHERE seq = :s"), {"s": edited}
            )
    assert {f.seq for f in verify(store.rows())} == {3, 5}
    store.close()
    db.dispose()
