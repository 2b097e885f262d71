"""The council's case-management JSON becomes FHIR R4: pure mapping, no HTTP."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import SourceBadPayload
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import social_care as sim
from carelink.simulators.store import PopulationSlice
from carelink.sources.base import local_id_system, security_labels, source_uri
from carelink.sources.social_care_map import iso, patient, source_person
from tests.support.schema import problems
from tests.support.social_care import record

SOURCE = "social-care"
PATIENT_REF = "Patient/gw-42"
LOCAL = local_id_system(SOURCE)

CASE: dict[str, Any] = {
    "personRef": "SC00000042",
    "forename": "Margaret",
    "surname": "Ackroyd",
    "dateOfBirth": "09/12/1938",
    "genderCode": "F",
    "nhsNo": "9990000018",
    "addressLines": ["14 Westgate", "Wakefield"],
    "postCode": "WF1 2QT",
    "caseStatus": "OPEN",
    "assessments": [
        {
            "assessmentId": "SC00000042-AS0",
            "assessmentType": "CA01",
            "completedOn": "02/04/2024",
            "outcome": "Eligible needs identified",
        }
    ],
    "services": [
        {
            "serviceId": "SC00000042-SV0",
            "serviceType": "SV-HC",
            "startDate": "23/04/2024",
            "hoursPerWeek": 10.5,
            "provider": "Council in-house team",
        }
    ],
    "alerts": [
        {
            "alertId": "SC00000042-AL0",
            "alertType": "AL-SG",
            "raisedOn": "15/01/2025",
            "restricted": True,
        }
    ],
    "carers": [{"carerId": "SC00000042-CR0", "relationship": "SPO", "carerName": "Arthur Ackroyd"}],
}


def case(**changes: Any) -> dict[str, Any]:
    """A deep copy of ``CASE`` with top-level fields replaced (``None`` removes one)."""
    out = copy.deepcopy(CASE)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def one(resources: list[dict], resource_type: str) -> dict:
    (found,) = [r for r in resources if r["resourceType"] == resource_type]
    return found


def test_the_person_becomes_a_patient_with_nhs_number_council_reference_and_iso_dates():
    p = patient(CASE, SOURCE)
    assert p["id"] == "social-care-SC00000042"
    assert p["meta"] == {"source": source_uri(SOURCE)}
    assert p["identifier"] == [
        {"system": NHS_NUMBER_SYSTEM, "value": "9990000018"},
        {"system": LOCAL, "value": "SC00000042"},
    ]
    assert p["name"] == [{"use": "official", "family": "Ackroyd", "given": ["Margaret"]}]
    assert p["gender"] == "female"
    assert p["birthDate"] == "1938-12-09"
    assert p["active"] is True
    assert p["address"] == [
        {"use": "home", "line": ["14 Westgate", "Wakefield"], "postalCode": "WF1 2QT"}
    ]


@pytest.mark.parametrize(
    "nhs", ["absent", None, "", "   "], ids=["absent", "null", "empty", "blank"]
)
def test_a_person_the_council_holds_no_nhs_number_for_has_only_the_council_identifier(nhs):
    doc = case()
    if nhs == "absent":
        del doc["nhsNo"]
    else:
        doc["nhsNo"] = nhs
    p = patient(doc, SOURCE)
    assert p["identifier"] == [{"system": LOCAL, "value": "SC00000042"}]
    assert source_person(doc, SOURCE).nhs_number is None


def test_the_index_entry_carries_the_councils_demographics():
    person = source_person(CASE, SOURCE)
    assert person.patient == patient(CASE, SOURCE)
    assert vars(person) | {"patient": None} == {
        "source": SOURCE,
        "local_id": "SC00000042",
        "nhs_number": "9990000018",
        "given": "Margaret",
        "family": "Ackroyd",
        "birth_date": "1938-12-09",
        "gender": "female",
        "postcode": "WF1 2QT",
        "address_line": "14 Westgate",
        "patient": None,
        "left_out": (),
        "echo": False,
    }


@pytest.mark.parametrize(
    ("council", "fhir"),
    [("01/01/2000", "2000-01-01"), ("29/02/2024", "2024-02-29"), ("31/12/1899", "1899-12-31")],
)
def test_council_dates_become_iso_dates(council, fhir):
    assert iso(council, SOURCE, "dateOfBirth") == fhir


@given(st.dates(min_value=date(1000, 1, 1)))
def test_any_date_written_day_first_reads_back_as_the_same_date(d):
    assert iso(f"{d.day:02d}/{d.month:02d}/{d.year:04d}", SOURCE, "startDate") == d.isoformat()


@pytest.mark.parametrize("bad", ["2024-04-02", "04/31/2024", "02/04/24", "2/4", 20240402, None])
def test_a_date_not_in_the_councils_format_is_a_bad_payload_naming_the_field(bad):
    with pytest.raises(SourceBadPayload, match="raisedOn"):
        iso(bad, SOURCE, "raisedOn")


def test_an_assessment_becomes_a_completed_clinical_impression_with_its_outcome():
    ci = one(record(CASE, SOURCE, PATIENT_REF), "ClinicalImpression")
    assert ci["id"] == "social-care-SC00000042-AS0"
    assert ci["status"] == "completed"
    assert ci["code"]["text"] == ci["description"] == "Care Act needs assessment"
    assert ci["code"]["coding"][0]["code"] == "CA01"
    assert ci["effectiveDateTime"] == "2024-04-02"
    assert ci["summary"] == "Eligible needs identified"


def test_a_service_becomes_an_active_social_care_plan_with_hours_and_provider():
    plan = one(record(CASE, SOURCE, PATIENT_REF), "CarePlan")
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert plan["category"][0]["text"] == "Social care"
    assert plan["period"] == {"start": "2024-04-23"}
    detail = plan["activity"][0]["detail"]
    assert detail["description"] == "Home care, 10.5 hours a week"
    assert detail["code"]["coding"][0]["code"] == "SV-HC"
    assert detail["performer"] == [{"display": "Council in-house team"}]


def test_a_restricted_alert_becomes_a_safety_flag_labelled_sdv():
    flag = one(record(CASE, SOURCE, PATIENT_REF), "Flag")
    assert flag["status"] == "active"
    assert flag["category"][0]["coding"][0]["code"] == "safety"
    assert flag["code"]["text"] == "Adult safeguarding concern"
    assert flag["period"] == {"start": "2025-01-15"}
    assert flag["meta"]["security"] == security_labels("SDV")
    assert flag["meta"]["security"][0]["code"] == "SDV"


def test_an_unrestricted_alert_carries_no_security_label():
    doc = case()
    doc["alerts"][0]["restricted"] = False
    assert "security" not in one(record(doc, SOURCE, PATIENT_REF), "Flag")["meta"]


@pytest.mark.parametrize(
    ("council", "role"), [("SPO", "SPS"), ("DAU", "DAU"), ("SON", "SON"), ("FRD", "FRND")]
)
def test_a_carer_becomes_a_related_person_with_a_v3_role_code(council, role):
    doc = case()
    doc["carers"][0]["relationship"] = council
    rp = one(record(doc, SOURCE, PATIENT_REF), "RelatedPerson")
    coding = rp["relationship"][0]["coding"][0]
    assert (coding["system"], coding["code"]) == (
        "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
        role,
    )
    assert rp["name"] == [{"text": "Arthur Ackroyd"}]


def test_codes_the_adapter_does_not_know_are_kept_as_text():
    doc = case()
    doc["services"][0]["serviceType"] = "SV-XX"
    doc["carers"][0]["relationship"] = "NEI"
    out = record(doc, SOURCE, PATIENT_REF)
    assert one(out, "CarePlan")["title"] == "SV-XX"
    assert one(out, "RelatedPerson")["relationship"] == [{"text": "NEI"}]
    assert [p for r in out for p in problems(r)] == []


def test_every_resource_is_namespaced_tagged_with_the_source_and_points_at_the_gateway_patient():
    out = record(CASE, SOURCE, PATIENT_REF)
    assert [r["resourceType"] for r in out] == [
        "Patient",
        "ClinicalImpression",
        "CarePlan",
        "Flag",
        "RelatedPerson",
    ]
    for r in out:
        assert r["id"].startswith("social-care-")
        assert r["meta"]["source"] == source_uri(SOURCE)
        if r["resourceType"] != "Patient":
            assert r.get("subject", r.get("patient")) == {"reference": PATIENT_REF}
        assert problems(r) == []


def _set(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc = case()
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (["not", "an", "object"], "not a JSON object"),
        (case(personRef=None), "missing personRef"),
        (case(surname=None), "missing surname"),
        (case(dateOfBirth=None), "missing dateOfBirth"),
        (case(carers=None), "missing carers"),
        (case(assessments="none"), "assessments is not a list"),
        (case(services=["SV-HC"]), "entry of services is not a JSON object"),
        (case(surname=42), "surname is not text"),
        (case(nhsNo=9990000018), "nhsNo is not text"),
        (case(addressLines="14 Westgate"), "addressLines"),
        (case(dateOfBirth="1938-12-09"), "dateOfBirth"),
        (_set(("alerts", 0, "alertId"), None), "missing alertId"),
        (_set(("services", 0, "startDate"), "23-04-2024"), "startDate"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_case_the_adapter_cannot_understand_is_a_bad_payload(doc, reason):
    with pytest.raises(SourceBadPayload, match=reason):
        record(doc, SOURCE, PATIENT_REF)


def test_every_case_served_for_100_generated_people_maps_to_valid_r4():
    council = PopulationSlice(SOURCE, 5, 4000)
    refs = council.local_ids()[:100]
    assert len(refs) == 100
    assert any(council.by_local[r].social_variant for r in refs)
    failures: list[str] = []
    seen: set[str] = set()
    for ref in refs:
        doc = sim.case_json(council.by_local[ref], ref, council.facts(ref))
        for resource in record(doc, SOURCE, PATIENT_REF):
            seen.add(resource["resourceType"])
            failures += problems(resource)
    assert failures == []
    assert seen == {"Patient", "ClinicalImpression", "CarePlan", "Flag", "RelatedPerson"}
