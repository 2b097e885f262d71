"""Everything the gateway returns validates against the official FHIR R4 JSON schema."""

from __future__ import annotations

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import System
from tests.support.schema import SCHEMA, problems

SAMPLE = 60


def test_the_validator_can_fail():
    assert problems({"resourceType": "Patient", "gender": "robot"})
    assert problems({"resourceType": "Observation", "id": "x", "colour": "blue"})


@pytest.mark.skipif(not SCHEMA.exists(), reason="shared FHIR schema not present")
def test_every_resource_for_60_patients_validates(system: System):
    checked = 0
    failures: list[str] = []
    types: set[str] = set()
    with httpx.Client(timeout=30) as client:
        for person in system.population[:SAMPLE]:
            found = client.get(
                f"{system.base}/Patient",
                params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
            )
            bundle = found.json()
            failures += problems(bundle)
            pid = bundle["entry"][0]["resource"]["id"]
            everything = client.get(
                f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000}
            ).json()
            failures += problems(everything)  # the Bundle and, one by one, its entries
            for entry in everything["entry"]:
                types.add(entry["resource"]["resourceType"])
                checked += 1
    assert checked > SAMPLE * 10
    assert {
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "EpisodeOfCare",
        "Flag",
        "Provenance",
        "OperationOutcome",
    } <= types
    assert failures == []
