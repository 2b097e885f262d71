"""Issue 11: authorisation and bounded input, each finding written as the attack.

A real gateway process (token mode, a private copy of the integration index)
is attacked with real signed tokens; every test asserts the attacker learned
or got nothing, and that the people who should still can. Organisations:
``RXX01`` is a stranger to every patient; ``person.gp_ods`` is the person's
registered practice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators.population import Person
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.procs import carelink
from tests.support.tokens import Issuer

STRANGER = "RXX01"
HIV = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}
CONSULT = "/cds-services/patient-consent-consult"


@dataclass
class Gateway:
    base: str
    issuer: Issuer
    keys: str  # the gateway's own issuer keys (``token mint --keys``)

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)

    def gp(self, person: Person, **claims: Any) -> str:
        """A doctor at the person's registered practice."""
        claims.setdefault("sub", f"gp-{person.gp_ods}")
        return self.token(organisation=person.gp_ods, **claims)

    def stranger(self, **claims: Any) -> str:
        """A doctor at an organisation that has nothing to do with the patient."""
        claims.setdefault("sub", "dr-stranger")
        return self.token(organisation=STRANGER, **claims)

    def citizen(self, pid: str) -> str:
        return self.token(
            sub=f"citizen-{pid}",
            role=None,
            organisation=None,
            patient=pid,
            scope="patient/*.cruds",
            purpose_of_use="PATRQT",
        )

    def backend(self, client: str, **claims: Any) -> str:
        claims.setdefault("scope", "system/*.rs")
        claims.setdefault("purpose_of_use", "HRESCH")
        return self.token(sub=client, client_id=client, role=None, organisation=None, **claims)

    def url(self, path: str) -> str:
        return (
            self.base.removesuffix("/fhir") + path if path.startswith("/cds") else self.base + path
        )

    def get(self, path: str, token: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.url(path), params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def send(
        self,
        method: str,
        path: str,
        body: Any,
        token: str,
        content_type: str = "application/fhir+json",
    ) -> httpx.Response:
        return httpx.request(
            method,
            self.url(path),
            content=body if isinstance(body, bytes) else json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            timeout=30,
        )


@pytest.fixture(scope="module")
def gw(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("authz")
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / "shared.db")
    issuer = Issuer()
    with token_gateways(system.env, db, issuer, tmp) as (started,):
        yield Gateway(started.base, issuer, started.env["CARELINK_ISSUER_KEYS"])


def _people(system: System, n: int) -> list[Person]:
    """``n`` people known to the GP and the acute trust, each used by one test only."""
    found = [p for p in system.population if {"gp", "acute"} <= p.sources and not p.social_variant]
    return found[:n]


@pytest.fixture(scope="module")
def people(system: System) -> list[Person]:
    return _people(system, 12)


def _pid(gw: Gateway, person: Person) -> str:
    r = gw.get("/Patient", gw.gp(person), identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
    assert r.status_code == 200, r.text
    return str(r.json()["entry"][0]["resource"]["id"])


def _unknown_nhs_number(system: System) -> str:
    known = {p.nhs_number for p in system.population}
    for n in range(999_000_001, 999_999_999):
        digit = check_digit(str(n))
        if digit is not None and f"{n}{digit}" not in known:
            return f"{n}{digit}"
    raise AssertionError("no free NHS number")  # pragma: no cover


def _object(gw: Gateway, pid: str, token: str) -> str:
    r = gw.send("POST", "/Consent", privacy_consent(pid, {"type": "deny"}), token)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _consult(gw: Gateway, token: str, nhs: str) -> httpx.Response:
    return gw.send(
        "POST",
        CONSULT,
        {
            "hook": "patient-consent-consult",
            "hookInstance": str(uuid.uuid4()),
            "context": {
                "patientId": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
                "purposeOfUse": ["TREAT"],
                "data": {"class": "Observation", "source": "acute"},
            },
        },
        token,
        "application/json",
    )


def _answer(r: httpx.Response) -> tuple[int, Any]:
    """What a caller learns from an answer (Bundles without their id, timestamp, links)."""
    body = r.json()
    if body.get("resourceType") == "Bundle":
        body = {k: v for k, v in body.items() if k not in ("id", "meta", "timestamp", "link")}
    return r.status_code, body


def _tasks(gw: Gateway, pid: str) -> list[dict[str, Any]]:
    officer = gw.token(role="R0001", sub="officer-tasks")
    bundle = gw.get("/Task", officer, status="requested").json()
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if e["resource"]["for"]["reference"] == f"Patient/{pid}"
    ]


def _record(gw: Gateway, pid: str, token: str) -> httpx.Response:
    return gw.get(f"/Patient/{pid}/$everything", token, _count=1000)


# --- 2. the consent routes are no oracle for who objected ------------------------------


def test_a_stranger_learns_nothing_about_an_objection_from_the_consent_routes(gw, system, people):
    person = people[0]
    pid = _pid(gw, person)
    cid = _object(gw, pid, gw.citizen(pid))
    stranger = gw.stranger()
    unknown = _unknown_nhs_number(system)
    # The decision service: the objector's NHS number and an unknown one answer alike.
    asked = _consult(gw, stranger, person.nhs_number)
    nobody = _consult(gw, stranger, unknown)
    assert asked.status_code == 404
    assert _answer(asked) == _answer(nobody)
    assert "deny" not in asked.text.lower()
    # Search by patient: the objector and a made-up id give the same empty answer.
    mine = gw.get("/Consent", stranger, patient=pid)
    made_up = gw.get("/Consent", stranger, patient="no-such-patient")
    assert mine.status_code == made_up.status_code == 200
    assert _answer(mine) == _answer(made_up)
    assert mine.json()["total"] == 0
    # Read, history and update by id: the Consent is as unknown as one never made.
    for suffix in ("", "/_history", "/_history/1"):
        real = gw.get(f"/Consent/{cid}{suffix}", stranger)
        fake = gw.get(f"/Consent/{'0' * 32}{suffix}", stranger)
        assert real.status_code == fake.status_code == 404
        assert real.text.replace(cid, "0" * 32) == fake.text
    put = gw.send("PUT", f"/Consent/{cid}", {"resourceType": "Consent", "id": cid}, stranger)
    assert put.status_code == 404
    assert pid not in put.text
    # The probing is not lost: refused accesses naming the patient, for privacy officers.
    officer = gw.token(role="R0001", sub="officer-1", purpose_of_use="HOPERAT")
    events = gw.get("/AuditEvent", officer, patient=pid, _count=1000).json()
    probes = [
        e["resource"]
        for e in events.get("entry", [])
        if e["resource"]["outcome"] == "4"
        and any(
            a["who"].get("identifier", {}).get("value") == "dr-stranger"
            for a in e["resource"]["agent"]
        )
    ]
    assert len(probes) >= 5
    # Those who may know still do: the registered practice, the patient, a privacy officer.
    gp = _consult(gw, gw.gp(person), person.nhs_number)
    assert gp.status_code == 200
    assert gp.json()["cards"][0]["summary"] == "CONSENT_DENY"
    for token in (gw.gp(person), gw.citizen(pid), gw.token(role="R0001", sub="officer-1")):
        assert gw.get("/Consent", token, patient=pid).json()["total"] == 1
        assert gw.get(f"/Consent/{cid}", token).status_code == 200


def test_a_clinician_elsewhere_cannot_record_or_change_a_patients_choices(gw, people):
    person = people[1]
    pid = _pid(gw, person)
    stranger = gw.stranger()
    permit = privacy_consent(pid, {"type": "permit", "securityLabel": [HIV]})
    refused = gw.send("POST", "/Consent", permit, stranger)
    fake = gw.send(
        "POST", "/Consent", privacy_consent("no-such-patient", {"type": "deny"}), stranger
    )
    assert refused.status_code == fake.status_code == 422
    assert refused.json() == fake.json()
    assert gw.get("/Consent", gw.gp(person), patient=pid).json()["total"] == 0


# --- 5. changing a patient's choices: policy, history, review --------------------------


def test_withdrawing_an_objection_is_for_the_registered_gp_kept_in_history_and_reviewed(gw, people):
    person = people[2]
    pid = _pid(gw, person)
    cid = _object(gw, pid, gw.citizen(pid))
    assert _tasks(gw, pid) == []  # the patient's own choice is not reviewed
    # A clinician elsewhere cannot delete it: to them it does not exist.
    assert gw.send("DELETE", f"/Consent/{cid}", None, gw.stranger()).status_code == 404
    current = gw.get(f"/Consent/{cid}", gw.gp(person)).json()
    assert current["status"] == "active"
    assert _record(gw, pid, gw.stranger()).status_code == 404  # the objection still holds
    # Nor a clerk at the practice (not in consentAccess), nor a nurse (not a consentManager).
    clerk = gw.gp(person, role="R8008", sub="clerk")
    assert gw.send("DELETE", f"/Consent/{cid}", None, clerk).status_code == 404
    # The registered GP may: a new, inactive version, reviewed, nothing deleted.
    gp = gw.gp(person)
    assert gw.send("DELETE", f"/Consent/{cid}", None, gp).status_code == 204
    after = gw.get(f"/Consent/{cid}", gp)
    assert after.status_code == 200
    assert after.json()["status"] == "inactive"
    assert after.json()["meta"]["versionId"] == "2"
    assert after.json()["performer"][0]["identifier"]["value"] == f"gp-{person.gp_ods}"
    assert after.json()["verification"][0]["verified"] is True
    history = gw.get(f"/Consent/{cid}/_history", gp).json()
    assert history["type"] == "history"
    assert [
        (e["resource"]["meta"]["versionId"], e["resource"]["status"]) for e in history["entry"]
    ] == [
        ("2", "inactive"),
        ("1", "active"),
    ]
    assert history["entry"][1]["resource"]["performer"] == [{"reference": f"Patient/{pid}"}]
    tasks = _tasks(gw, pid)
    assert len(tasks) == 1
    assert tasks[0]["code"]["text"] == "consent change review"
    assert tasks[0]["focus"]["reference"] == f"Consent/{cid}/_history/2"
    assert "withdraws" in tasks[0]["reasonCode"]["text"]


def test_a_permit_unlocking_hiv_data_by_a_clinician_is_reviewed_by_the_patient_is_not(gw, people):
    person = people[3]
    pid = _pid(gw, person)
    permit = privacy_consent(pid, {"type": "permit", "securityLabel": [HIV]})
    own = gw.send("POST", "/Consent", permit, gw.citizen(pid))
    assert own.status_code == 201, own.text
    assert _tasks(gw, pid) == []
    by_gp = gw.send("POST", "/Consent", permit, gw.gp(person))
    assert by_gp.status_code == 201, by_gp.text
    tasks = _tasks(gw, pid)
    assert [t["focus"]["reference"] for t in tasks] == [f"Consent/{by_gp.json()['id']}/_history/1"]
    assert "HIV" in tasks[0]["reasonCode"]["text"]


# --- 4 and 6. break-glass and reviews are bound to the full identity --------------------


def _break_glass(
    gw: Gateway, pid: str, token: str, reason: str = "unconscious in ED, no history"
) -> httpx.Response:
    return gw.send(
        "POST",
        "/Patient/$break-glass",
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
                {"name": "purpose", "valueCode": "ETREAT"},
                {"name": "reason", "valueString": reason},
            ],
        },
        token,
    )


def test_a_break_glass_reason_no_database_stores_is_400_and_grants_nothing(gw, people):
    person = people[6]
    pid = _pid(gw, person)
    _object(gw, pid, gw.citizen(pid))
    doctor = gw.token(
        sub=f"dr-{uuid.uuid4().hex[:8]}", organisation=STRANGER, purpose_of_use="ETREAT"
    )
    r = _break_glass(gw, pid, doctor, "unconscious\x00 in ED, no history")
    assert r.status_code == 400, r.text
    assert _record(gw, pid, doctor).status_code == 404


REVIEW = {
    "resourceType": "Parameters",
    "parameter": [{"name": "outcome", "valueCode": "appropriate"}],
}


def test_a_break_glass_grant_is_not_inherited_by_the_same_subject_elsewhere(gw, people):
    person = people[4]
    pid = _pid(gw, person)
    _object(gw, pid, gw.citizen(pid))
    sub = f"dr-{uuid.uuid4().hex[:8]}"
    doctor = gw.token(sub=sub, organisation=STRANGER, purpose_of_use="ETREAT")
    assert _break_glass(gw, pid, doctor).status_code == 201
    assert _record(gw, pid, doctor).status_code == 200
    for other in (
        gw.token(sub=sub, organisation="RYY02", purpose_of_use="ETREAT"),
        gw.token(sub=sub, organisation=STRANGER, role="R8001", purpose_of_use="ETREAT"),
        gw.token(sub=sub, organisation="RYY02", role="R8001", purpose_of_use="TREAT"),
    ):
        assert _record(gw, pid, other).status_code == 404


def test_nobody_reviews_their_own_break_glass_whatever_role_or_organisation_they_claim(gw, people):
    person = people[5]
    pid = _pid(gw, person)
    sub = f"dr-{uuid.uuid4().hex[:8]}"
    granted = _break_glass(gw, pid, gw.token(sub=sub, organisation=STRANGER))
    assert granted.status_code == 201
    tid = granted.json()["id"]
    for me_again in (
        gw.token(sub=sub, role="R0001", organisation=STRANGER),
        gw.token(sub=sub, role="R5105", organisation="RYY02"),
    ):
        refused = gw.send("POST", f"/Task/{tid}/$review", REVIEW, me_again)
        assert refused.status_code == 403
    still = gw.get(f"/Task/{tid}", gw.token(role="R0001", sub="officer-2")).json()
    assert still["status"] == "requested"
    done = gw.send("POST", f"/Task/{tid}/$review", REVIEW, gw.token(role="R0001", sub="officer-2"))
    assert done.status_code == 200
    assert done.json()["status"] == "completed"


# --- 6. export jobs are bound to the full identity ---------------------------------------


def test_a_clinician_whose_subject_is_a_backend_clients_id_gets_nothing_of_its_export(gw):
    client = "analytics-1"
    backend = gw.backend(client)
    kick = httpx.get(
        f"{gw.base}/Patient/$export",
        params={"_type": "Patient"},
        headers={"Authorization": f"Bearer {backend}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert kick.status_code == 202, kick.text
    status = kick.headers["Content-Location"]
    deadline = time.monotonic() + 120
    while (
        done := httpx.get(status, headers={"Authorization": f"Bearer {backend}"})
    ).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert done.status_code == 200, done.text
    url = done.json()["output"][0]["url"]
    impostors = [
        gw.token(sub=client),  # a clinician with the client's id as subject
        gw.token(sub=client, client_id=client),  # ... claiming the client id too
        gw.token(sub=client, purpose_of_use="HRESCH", scope="user/*.rs"),
        gw.backend(client, purpose_of_use="TREAT"),  # the client itself, wrong purpose
    ]
    for token in impostors:
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(status, headers=auth).status_code in (403, 404)
        assert httpx.get(url, headers=auth).status_code in (403, 404)
        assert httpx.delete(status, headers=auth).status_code in (403, 404)
    # A system/ scope in anything but a backend-services token is refused outright.
    assert (
        httpx.get(
            url, headers={"Authorization": f"Bearer {gw.token(sub=client, scope='system/*.rs')}"}
        ).status_code
        == 401
    )
    assert httpx.get(url, headers={"Authorization": f"Bearer {backend}"}).status_code == 200


# --- 7. scope context ---------------------------------------------------------------------


def test_patient_scopes_without_a_patient_context_are_refused(gw, people):
    person = people[6]
    token = gw.token(role=None, organisation=None, scope="patient/*.rs", purpose_of_use="PATRQT")
    r = gw.get("/Patient", token, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
    assert r.status_code == 401
    assert person.family not in r.text


def test_system_scopes_are_refused_on_the_live_clinical_api(gw, people):
    person = people[6]
    pid = _pid(gw, person)
    backend = gw.backend("clinical-bot", purpose_of_use="TREAT")
    for path, params in (
        ("/Patient", {"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}),
        (f"/Patient/{pid}", {}),
        (f"/Patient/{pid}/$everything", {}),
        ("/Observation", {"patient": pid}),
        ("/Consent", {"patient": pid}),
    ):
        r = gw.get(path, backend, **params)
        assert r.status_code == 403, (path, r.text)
        assert person.family not in r.text


def test_a_citizen_token_from_token_mint_carries_no_clinical_role(gw, people):
    person, other = people[7], people[8]
    pid, other_pid = _pid(gw, person), _pid(gw, other)
    minted = carelink(["token", "mint", "--keys", gw.keys, "--audience", gw.base, "--patient", pid])
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert "role" not in claims
    assert "organisation" not in claims
    assert claims["patient"] == pid
    # Not a clinician: nothing of anyone else, no break-glass, no review list.
    assert _record(gw, other_pid, token).status_code in (403, 404)
    assert gw.get("/Consent", token, patient=other_pid).json()["total"] == 0
    assert _break_glass(gw, other_pid, token).status_code == 403
    assert gw.get("/Task", token).status_code == 403


# --- 14 and 15. bounded input ---------------------------------------------------------------


def _nested(pid: str, levels: int) -> bytes:
    """A Consent whose provisions nest ``levels`` deep (built as text: too deep for json)."""
    shell = json.dumps(privacy_consent(pid, {"type": "deny"}))
    inner = '{"type": "permit", "provision": [' * levels + '{"type": "deny"}' + "]}" * levels
    return shell.replace('{"type": "deny"}', inner).encode()


def test_oversized_deep_or_mistyped_bodies_are_refused_and_nothing_is_stored(gw, people):
    person = people[9]
    pid = _pid(gw, person)
    gp = gw.gp(person)
    many = privacy_consent(pid, {"type": "deny", "provision": [{"type": "deny"}] * 50_000})
    padded = privacy_consent(pid, {"type": "deny"}) | {
        "text": {"status": "generated", "div": "x" * 10_000_000}
    }
    body = privacy_consent(pid, {"type": "deny"})
    cases = [
        (json.dumps(padded).encode(), "application/fhir+json", 413),  # 10 MB
        (json.dumps(many).encode(), "application/fhir+json", 413),  # 50,000 provisions
        (
            json.dumps(
                privacy_consent(pid, {"type": "deny", "provision": [{"type": "deny"}] * 150})
            ).encode(),
            "application/fhir+json",
            422,
        ),
        (_nested(pid, 500), "application/fhir+json", 400),
        (b"[" * 500 + b"]" * 500, "application/fhir+json", 400),
        (b'{"resourceType": "Consent", ', "application/fhir+json", 400),
        (json.dumps(body).encode(), "text/plain", 415),
        (json.dumps(body).encode(), "application/fhir+xml", 415),
        (json.dumps(body).encode(), "", 415),
    ]
    for content, media, status in cases:
        r = gw.send("POST", "/Consent", content, gp, media)
        assert r.status_code == status, (media, status, r.text[:200])
        assert r.json()["resourceType"] == "OperationOutcome"
    # A chunked body (no Content-Length) is cut off at the limit too.
    chunks = (b" " * 65536 for _ in range(40))
    chunked = httpx.post(
        f"{gw.base}/Consent",
        content=chunks,
        headers={"Authorization": f"Bearer {gp}", "Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert chunked.status_code == 413
    assert gw.get("/Consent", gp, patient=pid).json()["total"] == 0
    assert _tasks(gw, pid) == []
    # The gateway still answers promptly.
    assert _record(gw, pid, gp).status_code == 200


def test_oversized_request_headers_are_refused(gw, people):
    r = httpx.get(
        f"{gw.base}/metadata", headers={f"x-pad-{i}": "y" * 8000 for i in range(20)}, timeout=30
    )
    assert r.status_code == 431
    assert httpx.get(f"{gw.base}/metadata", timeout=30).status_code == 200


def test_a_50_mb_header_flood_is_cut_off_long_before_the_end(gw):
    host, port = gw.base.removeprefix("http://").removesuffix("/fhir").split(":")
    chunk = b"y" * 65536
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Flood: ")
        try:
            while sent < 50 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: what we want
            pass
        with contextlib.suppress(OSError):
            while part := sock.recv(65536):
                answer += part
    assert sent < 50 * 1024 * 1024
    assert answer.startswith(b"HTTP/1.1 431")
    assert httpx.get(f"{gw.base}/metadata", timeout=30).status_code == 200


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


RSA_HEADER = b'{"alg": "RS384", "kid": "rsa-1"}'
MALFORMED = [
    _b64(b"[]") + "." + _b64(b"{}") + ".c2ln",  # a JSON list header
    _b64(b"null") + "." + _b64(b"{}") + ".c2ln",
    _b64(b"42") + "." + _b64(b"{}") + ".c2ln",
    _b64(b'"RS384"') + "." + _b64(b"{}") + ".c2ln",
    _b64(b'{"alg": ["RS384"], "kid": {}}') + "." + _b64(b"{}") + ".c2ln",
    _b64(RSA_HEADER) + "." + _b64(b"[1, 2]") + ".c2ln",  # a JSON list payload
    _b64(RSA_HEADER) + ".!!!.c2ln",
    "garbage",
    "a.b",
    "....",
]


@pytest.mark.parametrize("token", MALFORMED)
def test_a_malformed_token_is_401_never_500(gw, people, token):
    person = people[10]
    r = httpx.get(
        f"{gw.base}/Patient",
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        headers={"Authorization": f"Bearer {token}".encode()},
        timeout=30,
    )
    assert r.status_code == 401, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_token_claims_of_the_wrong_type_are_401(gw, people):
    person = people[10]
    for claims in (
        {"sub": ["x"]},
        {"role": 42},
        {"scope": ["user/*.rs"]},
        {"nbf": "soon"},
        {"sub": None},
        # text no database stores (PostgreSQL refuses a NUL, and the subject is in every
        # AuditEvent's row: it would fail the group commit it shared) and no id holds
        {"sub": "clinician\x00"},
        {"organisation": "RXX01\n"},
        {"sub": "x" * 201},
    ):
        token = gw.issuer.token(aud=gw.base, **claims)
        r = gw.get("/Patient", token, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
        assert r.status_code == 401, (claims, r.text)


def test_system_scopes_reach_the_live_api_only_where_the_policy_says_so(system, people, tmp_path):
    """``systemScopesOnLiveApi`` (default false) is the one switch; still backend tokens only."""
    policy = json.loads((Path(__file__).parents[2] / "consent" / "policy.json").read_text())
    policy["systemScopesOnLiveApi"] = True
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp_path / "allowing.db")
    issuer = Issuer()
    extra = {"CARELINK_CONSENT_POLICY": str(tmp_path / "policy.json")}
    with token_gateways(system.env, db, issuer, tmp_path, extra=extra) as (started,):
        allowing = Gateway(started.base, issuer, started.env["CARELINK_ISSUER_KEYS"])
        person = people[11]
        lookup = {"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
        bot = allowing.backend("clinical-bot", purpose_of_use="TREAT", scope="system/Patient.rs")
        assert allowing.get("/Patient", bot, **lookup).json()["total"] == 1
        assert allowing.get("/Observation", bot, patient="x").status_code == 403  # not granted
        posing = allowing.token(sub="clinical-bot", scope="system/Patient.rs")
        assert allowing.get("/Patient", posing, **lookup).status_code == 401


# --- control characters: no FHIR string holds one, and PostgreSQL stores no NUL ----------


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("GET", "/Patient?family=Smi%00th&birthdate=1950-01-01", None, None),
        ("GET", "/Patient?identifier=x%7Ca%1Fb", None, None),
        ("GET", "/Patient/abc%00def", None, None),
        ("POST", "/Patient/_search", b"family=Smi%00th&birthdate=1950", "form"),
        ("POST", "/Patient/$break-glass", "reason", None),
    ],
    ids=["query", "query-unit-separator", "path", "form", "json-escape"],
)
def test_a_control_character_anywhere_in_a_request_is_400_before_any_route(
    gw, people, method, path, body, content_type
):
    """Before: SQLite searched for the NUL and PostgreSQL failed the query (DataError:
    500); now the request is refused as FHIR refuses such a string."""
    doctor = gw.token(sub="dr-controls", purpose_of_use="ETREAT")
    if body == "reason":
        pid = _pid(gw, people[7])
        r = _break_glass(gw, pid, doctor, "unconscious in ED\u0001 no history")
    elif body is None:
        r = httpx.request(
            method, gw.url(path), headers={"Authorization": f"Bearer {doctor}"}, timeout=30
        )
    else:
        r = gw.send(method, path, body, doctor, "application/x-www-form-urlencoded")
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "control characters" in outcome["issue"][0]["diagnostics"]
