"""Every allowed and refused request leaves exactly the audit events described."""

from __future__ import annotations

import base64
import sqlite3

import httpx
import orjson

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.integration.test_auth import secured  # noqa: F401 - the token-mode gateway
from tests.support.procs import carelink
from tests.support.schema import problems


def _store(system) -> AuditStore:
    return AuditStore(Database(system.env["CARELINK_DATABASE_URL"]))


def _new_events(store: AuditStore, since: int) -> list[dict]:
    return [orjson.loads(r.event) for r in store.rows() if r.seq > since]


def _person(system):
    return next(p for p in system.population if {"gp", "acute"} <= p.sources)


def test_a_lookup_and_a_record_read_leave_one_balp_event_each(system):
    store = _store(system)
    start, _ = store.head()
    person = _person(system)
    found = httpx.get(
        f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    ).json()
    pid = found["entry"][0]["resource"]["id"]
    httpx.get(f"{system.base}/Patient/{pid}/$everything", timeout=10)
    events = _new_events(store, start)
    assert [e["subtype"][0]["code"] for e in events] == ["search-type", "operation"]
    for e in events:
        assert problems(e) == []
        assert e["outcome"] == "0"
        assert {"reference": f"Patient/{pid}"} in [x.get("what") for x in e["entity"]]
        query = next(x["query"] for x in e["entity"] if "query" in x)
        assert base64.b64decode(query).decode().startswith("/fhir/Patient")
        user = next(a for a in e["agent"] if a["requestor"])
        assert user["role"][0]["coding"][0]["code"] == "R8000"
        assert e["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"


def _pid(system) -> str:
    person = _person(system)
    found = httpx.get(
        f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    ).json()
    return str(found["entry"][0]["resource"]["id"])


def _patients(event: dict) -> list[str]:
    return [
        x["what"]["reference"]
        for x in event["entity"]
        if x.get("what", {}).get("reference", "").startswith("Patient/")
    ]


def test_refusals_are_audited_with_their_reason_under_the_person_named(system, secured):  # noqa: F811
    base, issuer = secured
    pid = _pid(system)
    store = _store(system)
    start, _ = store.head()
    nhs = _person(system).nhs_number
    httpx.get(f"{base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs}"})
    token = issuer.token(aud=base, scope="user/Patient.rs")
    httpx.get(
        f"{base}/Condition",
        params={"patient": "someone"},
        headers={"Authorization": f"Bearer {token}"},
    )
    events = _new_events(store, start)
    assert [e["outcome"] for e in events] == ["4", "4"]
    assert events[0]["outcomeDesc"] == "a bearer token is required"
    assert _patients(events[0]) == [f"Patient/{pid}"]  # the NHS number, resolved
    assert events[1]["outcomeDesc"] == "no scope allows search of Condition"
    assert _patients(events[1]) == []  # nobody the index knows: no patient


def test_privacy_officers_and_the_patient_see_who_accessed_the_record(system, secured):  # noqa: F811
    base, issuer = secured
    person = _person(system)
    clinician = issuer.token(aud=base)
    found = httpx.get(
        f"{base}/Patient",
        headers={"Authorization": f"Bearer {clinician}"},
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
    ).json()
    pid = found["entry"][0]["resource"]["id"]
    officer = issuer.token(aud=base, role="R0001", purpose_of_use="HOPERAT")
    seen = httpx.get(
        f"{base}/AuditEvent",
        params={"patient": pid},
        headers={"Authorization": f"Bearer {officer}"},
    ).json()
    assert seen["total"] >= 1
    assert all(problems(e["resource"]) == [] for e in seen["entry"])
    citizen = issuer.token(aud=base, patient=pid, role=None, scope="patient/*.rs")
    own = httpx.get(
        f"{base}/AuditEvent",
        params={"patient": pid},
        headers={"Authorization": f"Bearer {citizen}"},
    )
    assert own.status_code == 200
    assert any(
        a.get("who", {}).get("display") == "RXX01"
        for e in own.json()["entry"]
        for a in e["resource"]["agent"]
    )
    other = httpx.get(
        f"{base}/AuditEvent",
        params={"patient": "someone-else"},
        headers={"Authorization": f"Bearer {citizen}"},
    )
    assert other.status_code == 403
    nosy = httpx.get(
        f"{base}/AuditEvent",
        params={"patient": pid},
        headers={"Authorization": f"Bearer {clinician}"},
    )
    assert nosy.status_code == 403
    treating = issuer.token(aud=base, role="R0001")  # an officer, but for direct care
    wrong_purpose = httpx.get(
        f"{base}/AuditEvent",
        params={"patient": pid},
        headers={"Authorization": f"Bearer {treating}"},
    )
    assert wrong_purpose.status_code == 403


def test_audit_verify_passes_an_untouched_trail_and_names_an_edited_record(system, tmp_path):
    env = {**system.env}
    keys = ["--keys", str(tmp_path / "audit-keys")]
    cp = tmp_path / "checkpoint.json"
    assert carelink(["audit", "checkpoint", "--out", str(cp), *keys], env).returncode == 0
    ok = carelink(["audit", "verify", "--checkpoint", str(cp), *keys], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit trail intact" in ok.stdout
    db = sqlite3.connect(env["CARELINK_DATABASE_URL"])
    seq, event = db.execute("SELECT seq, event FROM audit_events ORDER BY seq LIMIT 1").fetchone()
    try:
        db.execute("UPDATE audit_events SET event = ? WHERE seq = ?", (event + b" ", seq))
        db.commit()
        bad = carelink(["audit", "verify", "--checkpoint", str(cp), *keys], env)
    finally:
        db.execute("UPDATE audit_events SET event = ? WHERE seq = ?", (event, seq))
        db.commit()
        db.close()
    assert bad.returncode == 5
    assert f"record {seq}: content does not match its hash (edited)" in bad.stdout


def test_patient_data_is_not_served_when_the_trail_cannot_be_written(system):
    person = _person(system)
    db = sqlite3.connect(system.env["CARELINK_DATABASE_URL"])
    db.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
    db.commit()
    try:
        r = httpx.get(
            f"{system.base}/Patient",
            params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        )
    finally:
        db.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
        db.commit()
        db.close()
    assert r.status_code == 503
    assert r.json()["resourceType"] == "OperationOutcome"
    assert person.family not in r.text
