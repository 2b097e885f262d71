"""Consents and break-glass grants in SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carelink.storage import ConsentRow, ConsentStore, Database, GrantRow


@pytest.fixture
def store(database_url: str) -> Iterator[ConsentStore]:
    db = Database(database_url)
    db.migrate()
    s = ConsentStore(db)
    yield s
    s.close()
    db.dispose()


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
