"""The council's JSON, mapped to FHIR R4."""

from __future__ import annotations

import pytest

from carelink.errors import SourceBadPayload
from carelink.simulators import social_care as sim
from carelink.simulators.store import PopulationSlice
from carelink.sources.social_care_map import iso, patient
from tests.support.schema import problems
from tests.support.social_care import record

CASE = {
    "personRef": "SC1",
    "forename": "Bill",
    "surname": "Firth",
    "dateOfBirth": "07/03/1941",
    "genderCode": "M",
    "nhsNo": None,
    "addressLines": ["3 Kirkgate", "Wakefield"],
    "postCode": "WF1 1AB",
    "caseStatus": "OPEN",
    "assessments": [
        {
            "assessmentId": "SC1-AS0",
            "assessmentType": "CA01",
            "completedOn": "01/02/2025",
            "outcome": "Eligible",
        }
    ],
    "services": [
        {
            "serviceId": "SC1-SV0",
            "serviceType": "SV-HC",
            "startDate": "22/02/2025",
            "hoursPerWeek": 14.0,
        }
    ],
    "alerts": [
        {"alertId": "SC1-AL0", "alertType": "AL-SG", "raisedOn": "03/03/2025", "restricted": True}
    ],
    "carers": [{"carerId": "SC1-CR0", "relationship": "DAU", "carerName": "Firth"}],
}


def test_a_person_without_an_nhs_number_has_only_the_council_identifier():
    p = patient(CASE, "social-care")
    assert [i["system"] for i in p["identifier"]] == ["https://carelink.example/Id/social-care"]
    assert p["birthDate"] == "1941-03-07"
    assert p["gender"] == "male"
    assert p["address"][0]["postalCode"] == "WF1 1AB"


def test_the_case_maps_to_one_resource_per_item_all_valid_r4():
    out = record(CASE, "social-care", "Patient/p9")
    kinds = [r["resourceType"] for r in out]
    assert kinds == ["Patient", "ClinicalImpression", "CarePlan", "Flag", "RelatedPerson"]
    assert out[2]["activity"][0]["detail"]["description"] == "Home care, 14 hours a week"
    assert out[3]["meta"]["security"][0]["code"] == "SDV"
    assert out[4]["relationship"][0]["coding"][0]["code"] == "DAU"
    assert all(r.get("subject", r.get("patient")) == {"reference": "Patient/p9"} for r in out[1:])
    assert [p for r in out for p in problems(r)] == []


@pytest.mark.parametrize("bad", ["1941-03-07", "31/02/2020", "", None, "7/3"])
def test_dates_not_in_the_councils_format_are_bad_payload(bad):
    with pytest.raises(SourceBadPayload, match="completedOn"):
        iso(bad, "social-care", "completedOn")


@pytest.mark.parametrize("missing", ["personRef", "surname", "dateOfBirth", "assessments"])
def test_missing_fields_are_bad_payload(missing):
    broken = {k: v for k, v in CASE.items() if k != missing}
    with pytest.raises(SourceBadPayload, match=missing):
        record(broken, "social-care", "Patient/p")


def test_every_case_the_simulator_serves_for_100_people_maps_to_valid_r4():
    people = PopulationSlice("social-care", 3, 3000)
    failures = []
    for ref in people.local_ids()[:100]:
        doc = sim.case_json(people.by_local[ref], ref, people.facts(ref))
        failures += [p for r in record(doc, "social-care", "Patient/x") for p in problems(r)]
    assert failures == []
