"""Consent for direct care through the real API: real Consents, two real gateway processes.

The two gateways share one SQLite file (a copy of the integration index, so
nothing here changes what other tests see) and each validates real signed
tokens. Organisations: ``RXX01`` is a stranger to every patient; a patient's
own GP practice is ``person.gp_ods``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.consent.directive import CONSENT_SCOPE, ODS_SYSTEM, ROLE_SYSTEM
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.clinical import facts
from carelink.simulators.population import Person
from tests.integration.conftest import SEED, System
from tests.support.consents import privacy_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.tokens import Issuer

STRANGER = "RXX01"
ACUTE_ODS = "RAC00"
SOURCE = "urn:carelink:source:{name}"


@dataclass
class Gateway:
    base: str
    issuer: Issuer

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)

    def officer(self) -> str:
        """A privacy officer: may record any patient's choices (policy consentAccess)."""
        return self.token(role="R0001", sub="privacy-officer-1")

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.base}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token or self.token()}"},
            timeout=15,
        )

    def send(self, method: str, path: str, body: Any, token: str | None = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base}{path}",
            content=json.dumps(body) if body is not None else None,
            headers={
                "Authorization": f"Bearer {token or self.officer()}",
                "Content-Type": "application/fhir+json",
            },
            timeout=15,
        )


@pytest.fixture(scope="module")
def pair(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    tmp = tmp_path_factory.mktemp("consent")
    db = tmp / "shared.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    issuer = Issuer()
    with token_gateways(system.env, db, issuer, tmp, count=2) as started:
        yield [Gateway(g.base, issuer) for g in started]


def _people(system: System, *, sources: set[str]) -> Iterator[Person]:
    for p in system.population:
        if sources <= p.sources and p.social_variant is None:
            yield p


def _pid(gw: Gateway, person: Person) -> str:
    token = gw.token(organisation=person.gp_ods)
    r = gw.get("/Patient", token, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
    return str(r.json()["entry"][0]["resource"]["id"])


def _org(ods: str, role: str = "IRCP") -> dict[str, Any]:
    return {
        "role": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": role,
                }
            ]
        },
        "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}},
    }


def _label(code: str) -> dict[str, str]:
    return {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}


def _record(gw: Gateway, pid: str, token: str) -> httpx.Response:
    return gw.get(f"/Patient/{pid}/$everything", token, _count=1000)


def _shown(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _store(gw: Gateway, consent: dict[str, Any]) -> str:
    r = gw.send("POST", "/Consent", consent)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _labels(r: dict[str, Any]) -> set[str]:
    return {s["code"] for s in r.get("meta", {}).get("security", [])}


# --- the right to object ---------------------------------------------------------------


def test_an_objection_hides_the_record_from_everyone_but_the_gp_for_its_own_data(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute", "community"}))
    pid = _pid(gw, person)
    stranger = gw.token(organisation=STRANGER)
    before = _record(gw, pid, stranger).json()
    assert {r["meta"].get("source") for r in _shown(before)} >= {
        SOURCE.format(name="acute"),
        SOURCE.format(name="gp"),
    }
    cid = _store(gw, privacy_consent(pid, {"type": "deny"}))
    try:
        # Nobody else finds them, by any route, and nothing says why.
        lookup = gw.get("/Patient", stranger, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
        assert lookup.status_code == 200
        assert lookup.json()["total"] == 0
        assert lookup.json().get("entry", []) == []
        count = gw.get(
            "/Patient",
            stranger,
            identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}",
            _summary="count",
        )
        assert count.json()["total"] == 0
        for path, params in (
            (f"/Patient/{pid}", {}),
            (f"/Patient/{pid}/$everything", {}),
            ("/Observation", {"patient": pid}),
            ("/Patient/$ihe-pix", {"sourceIdentifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}),
        ):
            r = gw.get(path, stranger, **params)
            assert r.status_code == 404, (path, r.text)
            assert "consent" not in r.text.lower()
        # The patient's own GP practice still finds them, for its own data only.
        gp = gw.token(organisation=person.gp_ods)
        found = gw.get("/Patient", gp, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
        assert found.json()["total"] == 1
        idents = {i["system"] for i in found.json()["entry"][0]["resource"]["identifier"]}
        assert not any(s.endswith(("/acute", "/community")) for s in idents)
        record = _record(gw, pid, gp).json()
        sources = {
            r["meta"].get("source") for r in _shown(record) if r["resourceType"] != "Patient"
        }
        assert sources == {SOURCE.format(name="gp")}
        assert record["total"] == len(_shown(record))
        outcome_text = json.dumps([e for e in record["entry"] if e["search"]["mode"] == "outcome"])
        assert "acute" not in outcome_text
        assert "community" not in outcome_text
    finally:
        assert gw.send("DELETE", f"/Consent/{cid}", None).status_code == 204
    # Withdrawn: shared again at once.
    assert _record(gw, pid, stranger).json()["total"] == before["total"]


@pytest.mark.parametrize(
    ("status", "period"),
    [
        ("inactive", None),
        ("draft", None),
        ("active", {"start": "2020-01-01", "end": "2021-01-01"}),  # expired
        ("active", {"start": "2099-01-01"}),  # not yet in force
    ],
)
def test_inactive_and_expired_objections_have_no_effect(pair, system, status, period):
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)
    provision: dict[str, Any] = {"type": "deny"}
    if period:
        provision["period"] = period
    cid = _store(gw, privacy_consent(pid, provision, status))
    try:
        r = _record(gw, pid, gw.token(organisation=STRANGER))
        assert r.status_code == 200
        assert any(x["resourceType"] == "Condition" for x in _shown(r.json()))
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


def _object_to_acute(gw: Gateway, pid: str) -> str:
    """Record the patient's objection to the acute trust's data (only); the Consent id."""
    deny = {"type": "deny", "actor": [_org(ACUTE_ODS, "CST")]}
    return _store(gw, privacy_consent(pid, {"type": "permit", "provision": [deny]}))


def test_objecting_to_one_organisations_data_hides_only_that_data(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)
    stranger = gw.token(organisation=STRANGER)
    before = _shown(_record(gw, pid, stranger).json())
    acute = [r for r in before if r["meta"].get("source") == SOURCE.format(name="acute")]
    assert acute
    cid = _object_to_acute(gw, pid)
    try:
        got = _record(gw, pid, stranger).json()
        after = _shown(got)
        assert not [r for r in after if r["meta"].get("source") == SOURCE.format(name="acute")]
        assert len(after) == len(before) - len(acute)
        assert got["total"] == len(after)
        patient = next(r for r in after if r["resourceType"] == "Patient")
        assert not any(i["system"].endswith("/acute") for i in patient["identifier"])
        # Paging never brings the hidden data back.
        seen = []
        url: str | None = f"{gw.base}/Patient/{pid}/$everything?_count=7"
        while url:
            page = httpx.get(url, headers={"Authorization": f"Bearer {stranger}"}).json()
            assert page["total"] == len(after)
            seen += _shown(page)
            url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
        assert sorted(r["id"] for r in seen) == sorted(r["id"] for r in after)
        # Per-type search and its count agree.
        obs = gw.get("/Observation", stranger, patient=pid, _summary="count").json()["total"]
        assert obs == len([r for r in after if r["resourceType"] == "Observation"])
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


def test_a_search_shows_the_patient_as_consent_leaves_it_not_as_stored(pair, system):
    """A demographic search serves a Patient shown unchanged as its stored bytes; one whose
    patient objected to an organisation's data must go out trimmed of that source's
    local identifiers, on the search as on the record."""
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)
    stranger = gw.token(organisation=STRANGER)

    def found() -> dict[str, Any]:
        bundle = gw.get(
            "/Patient", stranger, family=person.family, birthdate=person.birth_date.isoformat()
        ).json()
        return next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == pid)

    def acute(identifier: dict[str, Any]) -> bool:
        return str(identifier["system"]).endswith("/acute")

    before = found()
    assert any(acute(i) for i in before["identifier"])
    cid = _object_to_acute(gw, pid)
    try:
        kept = [i for i in before["identifier"] if not acute(i)]
        assert found() == {**before, "identifier": kept}
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)
    assert found() == before


# --- sensitive data -------------------------------------------------------------------


def _gp_sensitive(system: System) -> tuple[Person, str]:
    """Someone whose GP record holds HIV or sexual-health data (no role sees it by default)."""
    for p in _people(system, sources={"gp"}):
        for f in facts(SEED, p, "gp"):
            if f.sensitivity in ("HIV", "STD"):
                return p, f.sensitivity
    raise AssertionError("the test population has nobody with HIV or STD data at the GP")


def test_sensitive_data_is_withheld_unless_a_consent_names_its_category(pair, system):
    gw = pair[0]
    person, label = _gp_sensitive(system)
    pid = _pid(gw, person)
    named = gw.token(organisation="RNAMED")
    other = gw.token(organisation=STRANGER)
    gp = gw.token(organisation=person.gp_ods)

    def sensitive(token: str) -> list[dict[str, Any]]:
        return [r for r in _shown(_record(gw, pid, token).json()) if label in _labels(r)]

    assert sensitive(gp)  # the custodian sees its own
    assert not sensitive(named)
    assert not sensitive(other)
    # "Share my {label} data only with RNAMED": permit, deny the category, except RNAMED.
    cid = _store(
        gw,
        privacy_consent(
            pid,
            {
                "type": "permit",
                "provision": [
                    {
                        "type": "deny",
                        "securityLabel": [_label(label)],
                        "provision": [
                            {
                                "type": "permit",
                                "actor": [_org("RNAMED")],
                                "securityLabel": [_label(label)],
                                "purpose": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                        "code": "TREAT",
                                    }
                                ],
                            }
                        ],
                    }
                ],
            },
        ),
    )
    try:
        shown = sensitive(named)
        assert shown
        assert all({"R", "NORDSCLCD"} <= _labels(r) for r in shown)
        assert not sensitive(other)  # wrong actor
        assert not sensitive(
            gw.token(organisation="RNAMED", purpose_of_use="CAREMGT")
        )  # wrong purpose
        # The nested deny beats the permit around it for everyone else; no trace in totals.
        bundle = _record(gw, pid, other).json()
        assert bundle["total"] == len(_shown(bundle))
        assert label not in json.dumps(bundle)
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


# --- purpose, roles, and the API for consents ------------------------------------------


def test_a_non_direct_care_purpose_is_refused(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp"}))
    r = gw.get(
        "/Patient",
        gw.token(purpose_of_use="HRESCH"),
        identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}",
    )
    assert r.status_code == 403
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "maybe"}, "status"),
        ({"scope": {"coding": [{"system": CONSENT_SCOPE, "code": "research"}]}}, "scope"),
        ({"patient": {"reference": "Patient/nobody"}}, "patient"),
        ({"provision": {"type": "perhaps"}}, "type"),
        ({"provision": {"type": "deny", "provision": [{"actor": []}]}}, "provision[0].type"),
        ({"provision": {"type": "deny", "agent": "x"}}, "agent"),
        (
            {
                "provision": {
                    "type": "deny",
                    "actor": [{**_org("X"), "reference": {"display": "X"}}],
                }
            },
            "actor[0]",
        ),
        ({"provision": {"type": "deny", "period": {"end": "last week"}}}, "period"),
    ],
)
def test_a_bad_consent_is_refused_naming_the_field(pair, system, change, field):
    gw = pair[0]
    pid = _pid(gw, next(_people(system, sources={"gp"})))
    r = gw.send("POST", "/Consent", {**privacy_consent(pid, {"type": "deny"}), **change})
    assert r.status_code in (400, 422), r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert field in json.dumps(r.json())
    assert gw.get("/Consent", patient=pid).json()["total"] == 0  # nothing half stored


def test_only_consent_managers_and_the_patient_record_consent(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp"}))
    pid = _pid(gw, person)
    # A clerk, even at the patient's own practice, is not among consentAccess's roles: to
    # them the patient is unknown (the same 422 a made-up patient id gets).
    admin = gw.token(role="R8008", organisation=person.gp_ods)
    refused = gw.send("POST", "/Consent", privacy_consent(pid, {"type": "deny"}), admin)
    assert refused.status_code == 422
    assert "known to the gateway" in refused.text
    read_only = gw.token(scope="user/*.rs", organisation=person.gp_ods)
    assert (
        gw.send("POST", "/Consent", privacy_consent(pid, {"type": "deny"}), read_only).status_code
        == 403
    )
    citizen = gw.token(role=None, patient=pid, scope="patient/*.cruds", purpose_of_use="PATRQT")
    mine = gw.send("POST", "/Consent", privacy_consent(pid, {"type": "deny"}), citizen)
    assert mine.status_code == 201, mine.text
    other = _pid(gw, next(p for p in _people(system, sources={"gp"}) if p != person))
    assert (
        gw.send("POST", "/Consent", privacy_consent(other, {"type": "deny"}), citizen).status_code
        == 422  # someone else's record: unknown to this citizen
    )
    assert gw.send("DELETE", f"/Consent/{mine.json()['id']}", None, citizen).status_code == 204


def test_withdrawing_by_update_and_seeing_it_in_a_second_gateway_process(pair, system):
    first, second = pair
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(first, person)
    nhs = f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
    consent = privacy_consent(pid, {"type": "deny"})
    cid = _store(first, consent)
    try:
        # Stored through the first process, in force in the second on its very next request.
        stranger2 = second.token(organisation=STRANGER)
        assert second.get("/Patient", stranger2, identifier=nhs).json()["total"] == 0
        withdrawn = second.send(
            "PUT", f"/Consent/{cid}", {**consent, "id": cid, "status": "inactive"}
        )
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json()["meta"]["versionId"] == "2"
        stranger1 = first.token(organisation=STRANGER)
        assert first.get("/Patient", stranger1, identifier=nhs).json()["total"] == 1
        stale = httpx.put(
            f"{first.base}/Consent/{cid}",
            content=json.dumps({**consent, "id": cid}),
            headers={
                "Authorization": f"Bearer {first.officer()}",
                "If-Match": 'W/"1"',
                "Content-Type": "application/fhir+json",
            },
        )
        assert stale.status_code == 412
    finally:
        first.send("DELETE", f"/Consent/{cid}", None)


def test_an_objection_withdrawn_by_someone_else_is_stored_with_its_review(pair, system):
    """The policy has a change someone other than the patient makes reviewed (an objection
    withdrawn): the change and its review Task are one write, so the withdrawal is never
    in force without a Task a privacy officer can find, naming the very version."""
    gw = pair[0]
    person = next(_people(system, sources={"gp"}))
    pid = _pid(gw, person)
    consent = privacy_consent(pid, {"type": "deny"})
    cid = _store(gw, consent)
    try:
        withdrawn = gw.send("PUT", f"/Consent/{cid}", {**consent, "id": cid, "status": "inactive"})
        assert withdrawn.status_code == 200, withdrawn.text
        officer = gw.token(role="R0001", organisation=STRANGER)
        todo = gw.get("/Task", officer, status="requested").json()
        mine = [
            e["resource"]
            for e in todo.get("entry", [])
            if e["resource"].get("focus", {}).get("reference") == f"Consent/{cid}/_history/2"
        ]
        assert len(mine) == 1, todo
        assert mine[0]["for"]["reference"] == f"Patient/{pid}"
        assert "withdraws the patient's objection" in mine[0]["reasonCode"]["text"]
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


def test_a_lookup_sees_a_consent_stored_through_another_process_on_its_next_request(pair, system):
    """Each process reuses its consent answers for a lookup's Patient while the Patient's
    bytes and Consents are the very same (``ParsedPatients``, ``FilterMemo``): a Consent
    stored, deleted or withdrawn through one process is in force on the other's very
    next lookup by the same caller, answered from that memo just before."""
    first, second = pair
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(first, person)
    stranger = second.token(organisation=STRANGER)

    def looked_up() -> dict[str, Any]:
        r = second.get("/Patient", stranger, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    before = looked_up()
    assert before["total"] == 1
    assert looked_up() == before  # the second from the memo
    shown = before["entry"][0]["resource"]
    assert any(str(i["system"]).endswith("/acute") for i in shown["identifier"])
    stored: list[str] = []
    try:
        stored.append(_object_to_acute(first, pid))
        trimmed = looked_up()
        kept = [i for i in shown["identifier"] if not str(i["system"]).endswith("/acute")]
        assert trimmed["entry"][0]["resource"] == {**shown, "identifier": kept}
        assert first.send("DELETE", f"/Consent/{stored.pop()}", None).status_code < 300
        assert looked_up() == before
        consent = privacy_consent(pid, {"type": "deny"})
        stored.append(_store(first, consent))
        assert looked_up()["total"] == 0
        cid = stored[-1]
        withdrawn = first.send(
            "PUT", f"/Consent/{cid}", {**consent, "id": cid, "status": "inactive"}
        )
        assert withdrawn.status_code == 200, withdrawn.text
        assert looked_up() == before
    finally:
        for cid in stored:
            first.send("DELETE", f"/Consent/{cid}", None)


# --- break-glass ---------------------------------------------------------------------


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


def test_break_glass_is_for_the_right_roles_audited_time_limited_and_reviewed(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)
    cid = _store(gw, privacy_consent(pid, {"type": "deny"}))
    try:
        doctor = gw.token(organisation=STRANGER, sub=f"dr-{uuid.uuid4().hex[:6]}")
        assert _record(gw, pid, doctor).status_code == 404
        # Wrong role, no reason: refused.
        clerk = gw.token(organisation=STRANGER, role="R8008")
        assert _break_glass(gw, pid, clerk).status_code == 403
        assert _break_glass(gw, pid, doctor, reason="").status_code == 400
        assert _record(gw, pid, doctor).status_code == 404
        granted = _break_glass(gw, pid, doctor)
        assert granted.status_code == 201, granted.text
        task = granted.json()
        assert task["resourceType"] == "Task"
        assert task["status"] == "requested"
        window = task["restriction"]["period"]
        assert (window["start"], window["end"]) != (None, None)
        minutes = (
            datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
            - datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
        ).total_seconds() / 60
        assert minutes == 60
        # For that patient, for that clinician only.
        shown = _shown(_record(gw, pid, doctor).json())
        assert shown
        assert all("BTG" in _labels(r) for r in shown if r["resourceType"] != "Patient")
        colleague = gw.token(organisation=STRANGER, sub="dr-colleague")
        assert _record(gw, pid, colleague).status_code == 404
        # Audited as break-glass.
        officer = gw.token(role="R0001", organisation=STRANGER)
        oversight = gw.token(role="R0001", organisation=STRANGER, purpose_of_use="HOPERAT")
        events = gw.get("/AuditEvent", oversight, patient=pid).json()
        purposes = [
            c["code"]
            for e in events.get("entry", [])
            for p in e["resource"].get("purposeOfEvent", [])
            for c in p["coding"]
        ]
        assert "BTG" in purposes
        # Reviewed by a privacy officer or Caldicott Guardian, not by the clinician.
        assert gw.get("/Task", doctor, status="requested").status_code == 403
        todo = gw.get("/Task", officer, status="requested").json()
        assert task["id"] in {e["resource"]["id"] for e in todo["entry"]}
        review = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "outcome", "valueCode": "appropriate"},
                {"name": "note", "valueString": "confirmed with ED consultant"},
            ],
        }
        guardian = gw.token(role="R5105", organisation=STRANGER)
        done = gw.send("POST", f"/Task/{task['id']}/$review", review, guardian)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed"
        assert gw.send("POST", f"/Task/{task['id']}/$review", review, guardian).status_code == 409
        left = gw.get("/Task", officer, status="requested").json()
        assert task["id"] not in {e["resource"]["id"] for e in left.get("entry", [])}
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


# --- the decision service -------------------------------------------------------------


def test_the_decision_service_says_permit_deny_or_no_consent_and_why(pair, system):
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)

    def ask(org: str, purpose: str = "TREAT") -> dict[str, Any]:
        r = httpx.post(
            gw.base.removesuffix("/fhir") + "/cds-services/patient-consent-consult",
            json={
                "hook": "patient-consent-consult",
                "hookInstance": str(uuid.uuid4()),
                "context": {
                    "patientId": [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}],
                    "purposeOfUse": [purpose],
                    "actor": [{"system": ODS_SYSTEM, "value": org}],
                    "data": {"class": "Observation", "source": "acute"},
                },
            },
            # the patient's own practice may ask (consentAccess); a stranger may not
            headers={"Authorization": f"Bearer {gw.token(organisation=person.gp_ods)}"},
        )
        assert r.status_code == 200, r.text
        return dict(r.json()["cards"][0])

    none = ask(STRANGER)
    assert none["summary"] == "NO_CONSENT"
    assert none["extension"]["decision"] == "permit"
    assert ask(STRANGER, "HRESCH")["extension"]["decision"] == "deny"
    cid = _store(
        gw,
        privacy_consent(
            pid,
            {
                "type": "permit",
                "provision": [
                    {"type": "deny", "actor": [_org(STRANGER)]},
                ],
            },
        ),
    )
    try:
        denied = ask(STRANGER)
        assert denied["summary"] == "CONSENT_DENY"
        assert denied["extension"]["basedOn"] == [f"Consent/{cid}"]
        permitted = ask("RFRIEND")
        assert permitted["summary"] == "CONSENT_PERMIT"
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


def test_roles_in_consents_are_nhs_role_codes(pair, system):
    """A provision naming a role (R8001 nurses) applies to that role only."""
    gw = pair[0]
    person = next(_people(system, sources={"gp", "acute"}))
    pid = _pid(gw, person)
    nurse_deny = {
        "type": "permit",
        "provision": [
            {
                "type": "deny",
                "actor": [
                    {
                        **_org("-"),
                        "reference": {"identifier": {"system": ROLE_SYSTEM, "value": "R8001"}},
                    }
                ],
            }
        ],
    }
    cid = _store(gw, privacy_consent(pid, nurse_deny))
    try:
        assert _record(gw, pid, gw.token(organisation=STRANGER, role="R8001")).status_code == 404
        assert _record(gw, pid, gw.token(organisation=STRANGER, role="R8000")).status_code == 200
    finally:
        gw.send("DELETE", f"/Consent/{cid}", None)


def test_policy_file_shipped_is_valid_and_examples_are_accepted(pair, system):
    gw = pair[0]
    pid = _pid(gw, next(_people(system, sources={"gp"})))
    examples = sorted((Path(__file__).parents[2] / "consent" / "examples").glob("*.json"))
    assert examples
    for path in examples:
        example = json.loads(path.read_text())
        example["patient"] = {"reference": f"Patient/{pid}"}
        r = gw.send("POST", "/Consent", example)
        assert r.status_code == 201, (path.name, r.text)
        gw.send("DELETE", f"/Consent/{r.json()['id']}", None)
