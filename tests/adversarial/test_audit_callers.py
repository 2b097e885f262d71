"""Callers one subject apart: the audit trail tells them apart, through a real gateway.

The attack this answers: the trail named the user by the token's bare ``sub``, and the
gateway trusts more than one issuer (its own and the identity provider), so ``dr-1`` of
the identity provider, ``dr-1`` of the gateway's own issuer and a backend client whose
id is ``dr-1`` left byte-identical agents: an accounting of disclosures could not say
who saw the record. Here each of them reads one patient through a real gateway (real
simulators; SQLite and PostgreSQL), on a trail whose first rows were written before
issuers were recorded (the bare subject in the event and in the ``agent`` column, hash
scheme 2), and:

- the patient's audit view names each reader by issuer and subject, and the backend
  client by its client id on the application agent;
- ``AuditEvent?agent=issuer|subject`` finds one issuer's user only, a bare subject every
  issuer's (the rows written before included), as it always found that subject;
- ``carelink audit verify`` passes on the trail of old and new rows, and fails when a
  row's ``agent`` column is made to name the other issuer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from carelink.audit.events import Access, Who, audit_event
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database
from carelink.storage.tables import audit_events, persons
from tests.integration.conftest import System
from tests.support.gateways import BOTH_DATABASES, IndexDatabase, person_id, token_gateways
from tests.support.procs import carelink
from tests.support.tokens import ISSUER, Issuer

SUBJECT = "dr-1"
CLINICIAN = {"role": "R8000", "organisation": "RXX01", "purpose_of_use": "TREAT"}
#: rows written before issuers were recorded: two reads of the patient by ``dr-1``
OLD_ROWS = 2


def _chain_2(prev: str, seq: int, recorded: str, pid: str, agent: str, event: bytes) -> str:
    """The hash a row stored before issuers were recorded carries (scheme 2, written
    out here as it was, not taken from the code under test)."""
    digest = hashlib.sha256(event).hexdigest()
    fields = [2, prev, seq, recorded, pid, "0", agent, digest]
    return hashlib.sha256(orjson.dumps(fields)).hexdigest()


def _old_rows(url: str, pid: str) -> list[str]:
    """Store reads of ``pid`` by ``dr-1`` as the trail held them before: the user agent
    with no issuer, the bare subject in ``agent``, hash scheme 2; their request ids."""
    prev, rows, ids = "0" * 64, [], []
    for seq in range(1, OLD_ROWS + 1):
        recorded = f"2026-11-01T00:00:0{seq}.000000Z"
        ids.append(f"old-{seq}")
        access = Access("read", f"/fhir/Patient/{pid}", ids[-1], recorded, "http://old/fhir")
        caller = Who(SUBJECT, "R8000", "RXX01", "TREAT")  # no issuer: the old event's shape
        event = orjson.dumps({**audit_event(access, caller, pid, "0"), "id": f"e{seq}"})
        assert b'"identifier":{"value":"dr-1"}' in event  # the shape main writes
        h = _chain_2(prev, seq, recorded, pid, SUBJECT, event)
        rows.append(
            {
                "seq": seq,
                "recorded": recorded,
                "patient_id": pid,
                "outcome": "0",
                "event": event,
                "prev_hash": prev,
                "hash": h,
                "agent": SUBJECT,
                "chain": 2,
            }
        )
        prev = h
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            # a trail of its own: the copied index may hold other tests' events
            for table in ("audit_index_blocks", "audit_patient_index", "audit_events"):
                conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 (our names)
            conn.execute(audit_events.insert(), rows)
    finally:
        db.dispose()
    return ids


@dataclass
class Trail:
    base: str
    env: dict[str, str]
    url: str
    issuer: Issuer
    pid: str
    old: list[str]  # request ids of the rows written before
    read_by: dict[str, str]  # reader -> the request id of its read


def _read(base: str, pid: str, token: str) -> str:
    r = httpx.get(f"{base}/Patient/{pid}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.headers["X-Request-ID"]


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def trail(
    request: pytest.FixtureRequest, system: System, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trail]:
    tmp = tmp_path_factory.mktemp(f"callers-{request.param}")
    policy = json.loads((Path(__file__).parents[2] / "consent" / "policy.json").read_text())
    policy["systemScopesOnLiveApi"] = True  # the backend client reads the live API too
    (tmp / "policy.json").write_text(json.dumps(policy))
    issuer = Issuer()
    person = next(p for p in system.population if {"gp", "acute"} <= p.sources)
    with ExitStack() as stack:
        url = stack.enter_context(IndexDatabase(request.param, system, tmp))
        db = Database(url)
        try:
            with db.engine.connect() as conn:
                pid = conn.execute(
                    sa.select(persons.c.id).where(persons.c.nhs_number == person.nhs_number)
                ).scalar_one()
        finally:
            db.dispose()
        old = _old_rows(url, pid)
        extra = {
            "CARELINK_DATABASE_URL": url,
            "CARELINK_CONSENT_POLICY": str(tmp / "policy.json"),
        }
        [started] = stack.enter_context(
            token_gateways(system.env, tmp / "unused.db", issuer, tmp, extra=extra)
        )
        base = started.base
        idp = issuer.token(aud=base, sub=SUBJECT, scope="user/*.rs", **CLINICIAN)
        assert person_id(base, f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}", idp) == pid
        local = LocalIssuer(Path(started.env["CARELINK_ISSUER_KEYS"]), create=False)
        tokens = {
            "idp user": idp,
            "local user": local.mint(base, {"sub": SUBJECT, "scope": "user/*.rs", **CLINICIAN}),
            "idp backend client": issuer.backend(base, SUBJECT),
        }
        read_by = {who: _read(base, pid, token) for who, token in tokens.items()}
        yield Trail(base, started.env, url, issuer, pid, old, read_by)


def _search(trail: Trail, **params: str) -> list[dict[str, Any]]:
    """Every event the search finds (all pages), as a privacy officer reads them."""
    officer = trail.issuer.token(
        aud=trail.base, sub="privacy-officer", role="R0001", purpose_of_use="HOPERAT"
    )
    headers = {"Authorization": f"Bearer {officer}"}
    page = httpx.get(f"{trail.base}/AuditEvent", params=params, headers=headers)
    found: list[dict[str, Any]] = []
    while True:
        assert page.status_code == 200, page.text
        found += [e["resource"] for e in page.json().get("entry", [])]
        following = [x["url"] for x in page.json()["link"] if x["relation"] == "next"]
        if not following:
            return found
        page = httpx.get(following[0], headers=headers)


def _request_id(event: dict[str, Any]) -> str:
    return str(event["entity"][-1]["what"]["identifier"]["value"])


def _by_request(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {_request_id(e): e for e in events}


def test_the_patients_audit_view_names_each_reader_by_issuer_subject_and_client(trail: Trail):
    seen = _by_request(_search(trail, patient=trail.pid))
    assert set(trail.old) <= set(seen)  # the rows written before are still found
    events = {who: seen[rid] for who, rid in trail.read_by.items()}
    users = {who: e["agent"][1]["who"]["identifier"] for who, e in events.items()}
    assert users == {
        "idp user": {"system": ISSUER, "value": SUBJECT},
        "local user": {"system": LOCAL_ISSUER, "value": SUBJECT},
        "idp backend client": {"system": ISSUER, "value": SUBJECT},
    }
    clients = {who: e["agent"][0]["who"].get("identifier") for who, e in events.items()}
    assert clients == {
        "idp user": None,
        "local user": None,
        "idp backend client": {"system": ISSUER, "value": SUBJECT},
    }
    agents = [orjson.dumps(e["agent"]) for e in events.values()]
    assert len(set(agents)) == len(agents)  # no two readers share their agents


def test_the_agent_search_tells_the_issuers_apart(trail: Trail):
    def found(agent: str) -> set[str]:
        return set(_by_request(_search(trail, agent=agent, patient=trail.pid)))

    idp, local = found(f"{ISSUER}|{SUBJECT}"), found(f"{LOCAL_ISSUER}|{SUBJECT}")
    assert trail.read_by["idp user"] in idp
    assert trail.read_by["idp backend client"] in idp
    assert trail.read_by["local user"] in local
    assert not idp & local
    assert not (idp | local) & set(trail.old)  # the rows before named no issuer
    every = found(SUBJECT)  # a bare subject: that subject at any issuer, as always
    assert set(trail.read_by.values()) | set(trail.old) <= every
    assert found(f"Practitioner/{SUBJECT}") == every  # a reference's last segment, as always
    assert found(f"|{SUBJECT}") == set(trail.old)  # no issuer: the rows before only
    assert found(f"{ISSUER}|{SUBJECT.upper()}") == set()  # exact, not case-blind
    by_identifier = set(_by_request(_search(trail, **{"agent:identifier": f"{ISSUER}|{SUBJECT}"})))
    assert by_identifier == idp  # FHIR's reference search by identifier, the same


def test_an_agent_search_the_gateway_cannot_read_is_refused(trail: Trail):
    officer = trail.issuer.token(
        aud=trail.base, sub="privacy-officer", role="R0001", purpose_of_use="HOPERAT"
    )
    for params in (
        {"agent": f"{ISSUER}|{SUBJECT}\\"},  # an escape with nothing after it
        {"agent": SUBJECT, "agent:identifier": SUBJECT},  # which one?
    ):
        r = httpx.get(
            f"{trail.base}/AuditEvent",
            params=params,
            headers={"Authorization": f"Bearer {officer}"},
        )
        assert r.status_code == 400, (params, r.text)


def test_a_trail_of_old_and_new_rows_verifies_and_a_moved_agent_is_reported(trail: Trail):
    ok = carelink(["audit", "verify"], trail.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    db = Database(trail.url)
    c = audit_events.c
    try:
        with db.engine.begin() as conn:
            kept = conn.execute(sa.select(c.seq, c.agent).where(c.agent.like(f"%{ISSUER}%")))
            seq, agent = kept.first()
            moved = agent.replace(ISSUER, LOCAL_ISSUER)
            conn.execute(sa.update(audit_events).where(c.seq == seq).values(agent=moved))
        try:
            bad = carelink(["audit", "verify"], trail.env)
        finally:
            with db.engine.begin() as conn:
                conn.execute(sa.update(audit_events).where(c.seq == seq).values(agent=agent))
    finally:
        db.dispose()
    assert bad.returncode == 5, bad.stdout + bad.stderr
    assert f"{seq}" in bad.stdout + bad.stderr
    assert "agent differs from its event" in bad.stdout + bad.stderr
