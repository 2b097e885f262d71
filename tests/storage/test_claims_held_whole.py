"""Every value a verified token can carry is held whole wherever the gateway stores it.

Invariant: for any claims ``auth.tokens`` accepts (each a string of at most
``CLAIM_LENGTH`` characters, any characters), a break-glass grant made by that caller
and an export job bound to its identity are stored on SQLite and PostgreSQL and read
back equal, and the grant is found again for that identity. Before migration 16,
PostgreSQL refused a grant whose organisation claim was over 20 characters, or whose
identity (the claims as JSON) was over 1,000, with a 500 to the clinician.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from carelink.api.review_routes import BREAK_GLASS, new_review
from carelink.auth.tokens import principal_from
from carelink.errors import Unauthenticated
from carelink.storage import ConsentStore, Database, JobStore
from carelink.storage.migrations import MIGRATIONS
from carelink.storage.tables import CLAIM_LENGTH

CLAIM = st.text(min_size=1, max_size=CLAIM_LENGTH)


def longest(k: int) -> str:
    """A longest claim in bytes: printable characters UTF-8 writes in four, in no
    repeating order (so no compression shortens them). Four such claims make an identity
    over PostgreSQL's limit for one index entry (2,704 bytes)."""
    return "".join(chr(0x20000 + (i * 7919 + k * 104729) % 0xA6DF) for i in range(CLAIM_LENGTH))


LONGEST = [longest(k) for k in range(4)]


@pytest.fixture
def stores(database_url):
    db = Database(database_url)
    db.migrate()
    yield ConsentStore(db), JobStore(db)
    db.dispose()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sub=CLAIM, organisation=CLAIM, role=CLAIM, client_id=CLAIM)
@example(sub=LONGEST[0], organisation=LONGEST[1], role=LONGEST[2], client_id=LONGEST[3])
@example(sub="clinician-1", organisation="RXX01-COMMUNITY-SERVICES", role="R8000", client_id="a")
@example(sub="nul\x00inside", organisation="RXX01", role="R8000", client_id="a")
def test_the_longest_claims_are_held_whole(stores, sub, organisation, role, client_id):
    consents, jobs = stores
    claims = {"sub": sub, "organisation": organisation, "role": role, "client_id": client_id}
    if not all(c.isprintable() for c in (sub, organisation, role, client_id)):
        with pytest.raises(Unauthenticated):  # control characters: refused at the token
            principal_from(claims)
        return
    caller = principal_from(claims, issuer="https://issuer.example/" + "i" * 100)
    grant = new_review(caller, "p" * 32, "an emergency, unconscious", time.time(), BREAK_GLASS, 30)
    consents.grant(grant)
    assert consents.grant_by_id(grant.id) == grant
    assert consents.has_grant(grant.patient_id, caller.identity, time.time())
    job_id = grant.id
    jobs.create(job_id, caller.identity, b"{}", time.time())
    job = jobs.get(job_id)
    assert job is not None
    assert job.client == caller.identity


def test_a_claim_longer_than_storage_holds_is_refused_at_the_token():
    with pytest.raises(Unauthenticated):
        principal_from({"sub": "x" * (CLAIM_LENGTH + 1)})


@pytest.mark.postgres
def test_migration_16_widens_a_database_made_before_it(postgres_url):
    """A PostgreSQL database as migrations 1-15 left it (the narrow columns, the index on
    the identity) takes the longest claims once migrated."""
    db = Database(postgres_url)
    db.migrate()
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE break_glass ALTER COLUMN organisation TYPE varchar(20), "
            "ALTER COLUMN role TYPE varchar(10), ALTER COLUMN actor TYPE varchar(1000), "
            "ALTER COLUMN person TYPE varchar(1000), "
            "ALTER COLUMN reviewer_identity TYPE varchar(1000)"
        )
        conn.exec_driver_sql("ALTER TABLE export_jobs ALTER COLUMN client TYPE varchar(1000)")
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_break_glass_actor ON break_glass (actor)"
        )
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 16")
    try:
        assert db.migrate() == max(n for n, _, _ in MIGRATIONS)
        names = ("sub", "organisation", "role", "client_id")
        claims = dict(zip(names, LONGEST, strict=True))
        caller = principal_from(claims, issuer="https://issuer.example")
        grant = new_review(caller, "p" * 32, "an emergency, unconscious", time.time(), BREAK_GLASS)
        store = ConsentStore(db)
        store.grant(grant)
        assert store.grant_by_id(grant.id) == grant
        JobStore(db).create(grant.id, caller.identity, b"{}", time.time())
    finally:
        db.dispose()
