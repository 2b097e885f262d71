"""Consents and break-glass grants in SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.storage import ConsentRow, ConsentStore, Database, GrantRow, IndexStore, PersonRow
from tests.storage.conftest import opened


@pytest.fixture
def store(database_url: str) -> Iterator[ConsentStore]:
    yield from opened(database_url, ConsentStore)


DR = '["issuer","dr","RXX01","R8000",null,null]'
DR_ELSEWHERE = '["issuer","dr","RYY02","R8000",null,null]'


def grant(gid: str, expires: float, kind: str = "break-glass") -> GrantRow:
    return GrantRow(
        gid,
        "dr",
        "RXX01",
        "R8000",
        "p1",
        "reason",
        0.0,
        expires,
        "requested",
        None,
        None,
        None,
        None,
        kind,
        DR,
        '["issuer","dr"]',
    )


def test_a_grant_is_in_force_until_it_expires_and_only_for_its_holder(store):
    store.grant(grant("g1", expires=100.0))
    assert store.has_grant("p1", DR, now=99.0)
    assert not store.has_grant("p1", DR, now=100.0)
    assert not store.has_grant("p1", "dr", now=50.0)  # the bare subject is no identity
    assert not store.has_grant("p1", DR_ELSEWHERE, now=50.0)
    assert not store.has_grant("p2", DR, now=50.0)


def test_a_consent_change_review_grants_no_access(store):
    store.grant(grant("g3", expires=100.0, kind="consent-change"))
    assert not store.has_grant("p1", DR, now=50.0)
    assert [g.kind for g in store.grants("requested")] == ["consent-change"]


def test_a_review_completes_once(store):
    store.grant(grant("g2", expires=100.0))
    assert [g.id for g in store.grants("requested")] == ["g2"]
    assert store.review("g2", "officer", "appropriate", "ok", 5.0)
    assert not store.review("g2", "officer", "inappropriate", "again", 6.0)
    assert store.grants("requested") == []
    done = store.grant_by_id("g2")
    assert done is not None
    assert (done.review_outcome, done.reviewer) == ("appropriate", "officer")


def test_only_active_consents_are_read_on_the_request_path_and_updates_are_versioned(store):
    row = ConsentRow("c1", "p1", "active", 1, "2026-11-23T00:00:00Z", b'{"id": "c1"}')
    assert store.put(row, None)
    assert not store.put(row, None)  # the id is taken
    assert store.active("p1") == [("c1", b'{"id": "c1"}')]
    newer = ConsentRow("c1", "p1", "inactive", 2, "2026-11-23T00:00:01Z", b'{"id": "c1", "v": 2}')
    assert not store.put(newer, expected_version=5)  # stale
    assert store.put(newer, expected_version=1)
    assert store.active("p1") == []
    assert [r.version for r in store.history("c1")] == [2, 1]  # every version is kept
    assert store.history("c1")[1].body == b'{"id": "c1"}'
    assert store.history("nobody") == []


def test_a_consent_change_and_its_review_are_stored_together_or_not_at_all(store):
    """A change that needs a review is stored with it in one transaction: a change never
    stands without its review, whatever stops the second write (here its review cannot
    be stored: its id is taken), and a change refused takes no review with it."""
    row = ConsentRow("c9", "p1", "active", 1, "2026-12-03T00:00:00Z", b'{"id": "c9"}')
    store.grant(grant("r1", expires=0.0, kind="consent-change"))
    assert not store.put(row, None, grant("r1", expires=0.0, kind="consent-change"))
    assert store.history("c9") == []  # the change went with its review
    assert store.put(row, None, grant("r2", expires=0.0, kind="consent-change"))
    assert [r.version for r in store.history("c9")] == [1]
    stale = ConsentRow("c9", "p1", "inactive", 2, "2026-12-03T00:00:01Z", b'{"id": "c9"}')
    assert not store.put(stale, 7, grant("r3", expires=0.0, kind="consent-change"))
    assert sorted(g.id for g in store.grants("requested")) == ["r1", "r2"]


OLD_TABLES = [
    "CREATE TABLE consents (id VARCHAR(64) PRIMARY KEY, patient_id VARCHAR(64) NOT NULL, "
    "status VARCHAR(20) NOT NULL, version INTEGER NOT NULL, last_updated VARCHAR(40) NOT NULL, "
    "body BYTEA NOT NULL)",
    "CREATE TABLE break_glass (id VARCHAR(64) PRIMARY KEY, subject VARCHAR(200) NOT NULL, "
    "organisation VARCHAR(20), role VARCHAR(10), patient_id VARCHAR(64) NOT NULL, "
    "reason TEXT NOT NULL, granted FLOAT NOT NULL, expires FLOAT NOT NULL, "
    "review_status VARCHAR(20) NOT NULL, reviewer VARCHAR(200), review_outcome VARCHAR(20), "
    "review_note TEXT, reviewed FLOAT)",
    "CREATE TABLE export_jobs (id VARCHAR(64) PRIMARY KEY, client VARCHAR(200) NOT NULL, "
    "status VARCHAR(20) NOT NULL, request BYTEA NOT NULL, created FLOAT NOT NULL, "
    "lease_until FLOAT NOT NULL, progress TEXT NOT NULL, manifest BYTEA)",
]


def test_migration_8_keeps_what_a_schema_7_database_holds(database_url):
    """Grants gain kind and identities (old ones match nobody), Consents their history."""
    import sqlalchemy as sa

    from carelink.storage.migrations import MIGRATIONS

    db = Database(database_url)
    blob = "BLOB" if db.is_sqlite else "BYTEA"
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE schema_version "
                "(version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
            )
        )
        for number, description, _ in MIGRATIONS[:7]:
            conn.execute(
                sa.text("INSERT INTO schema_version VALUES (:v, :d)"),
                {"v": number, "d": description},
            )
        for ddl in OLD_TABLES:
            conn.execute(sa.text(ddl.replace("BYTEA", blob)))
        conn.execute(
            sa.text("INSERT INTO consents VALUES ('c1', 'p1', 'active', 3, 't', :b)"),
            {"b": b'{"id": "c1"}'},
        )
        conn.execute(
            sa.text(
                "INSERT INTO break_glass (id, subject, patient_id, reason, granted, expires, "
                "review_status) VALUES ('g1', 'dr', 'p1', 'old', 0, 1e12, 'requested')"
            )
        )
    assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
    store = ConsentStore(db)
    try:
        assert [(r.id, r.version) for r in store.history("c1")] == [("c1", 3)]
        old = store.grant_by_id("g1")
        assert old is not None
        assert old.actor is None
        assert not store.has_grant("p1", "dr", now=1.0)  # a bare subject matches nothing
        newer = ConsentRow("c1", "p1", "inactive", 4, "t2", b'{"id": "c1", "v": 4}')
        assert store.put(newer, expected_version=3)
        assert [r.version for r in store.history("c1")] == [4, 3]
        store.grant(grant("g2", expires=1e12))
        assert store.has_grant("p1", DR, now=1.0)
    finally:
        store.close()
        db.dispose()


def _person(pid: str, nhs: str) -> PersonRow:
    return PersonRow(
        pid, nhs, "D", "O", "d", "o", None, None, None, b'{"id": "%s"}' % pid.encode(), "1"
    )


def test_the_lookups_one_read_gives_what_the_two_reads_give(store):
    """``person_by_nhs_with_consents`` (the lookup's single statement) and
    ``person_with_consents`` (``$everything``'s and search's) against the two
    reads they replace, for people with no, one and several consents, active or not."""
    index = IndexStore(store.db)
    people = [_person("p1", "9000000009"), _person("p2", "9000000017"), _person("p3", "9000000025")]
    index.replace_all(people, [], [])
    store.put(ConsentRow("c2", "p1", "active", 1, "t", b'{"id": "c2"}'), None)
    store.put(ConsentRow("c1", "p1", "active", 1, "t", b'{"id": "c1"}'), None)
    store.put(ConsentRow("c3", "p1", "inactive", 1, "t", b'{"id": "c3"}'), None)
    store.put(ConsentRow("c4", "p2", "inactive", 1, "t", b'{"id": "c4"}'), None)
    store.put(ConsentRow("c5", "p3", "active", 1, "t", b'{"id": "c5"}'), None)
    try:
        for person in people:
            assert person.nhs_number is not None
            one = index.person_by_nhs_with_consents(person.nhs_number)
            assert one is not None
            assert one == (index.person_by_nhs(person.nhs_number), store.active(person.id))
            by_id = index.person_with_consents(person.id)
            assert by_id == (index.person(person.id), store.active(person.id))
        assert [c for c, _ in store.active("p1")] == ["c1", "c2"]
        assert index.person_by_nhs_with_consents("9000000033") is None
        assert index.person_with_consents("p9") is None
    finally:
        index.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(
        st.tuples(
            st.sampled_from(["p1", "p2", "p3", "p10", "q"]),
            st.sampled_from(["active", "inactive", "rejected", "draft"]),
        ),
        max_size=12,
    ),
    asked=st.lists(st.sampled_from(["p1", "p2", "p3", "p10", "q", "nobody"]), max_size=8),
)
def test_active_consents_of_many_patients_are_each_ones_own(store, stored, asked):
    """One read for many patients gives each of them exactly what ``active`` gives them
    alone: no consent of one patient is handed to another, none left out, none inactive."""
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM consent_versions")
        conn.exec_driver_sql("DELETE FROM consents")
    for i, (patient, status) in enumerate(stored):
        row = ConsentRow(f"c{i:02d}", patient, status, 1, "t", f'{{"n": {i}}}'.encode())
        assert store.put(row, None)
    together = store.active_of(asked)
    assert together == {p: store.active(p) for p in asked if store.active(p)}
