"""UK Core shape after the merge: profiles claimed, NHS number status, ODS-coded Provenance."""

from __future__ import annotations

import copy
from pathlib import Path

from carelink.federation.fanout import SourceResult
from carelink.federation.merge import ODS_SYSTEM, provenance
from carelink.federation.ukcore import VERIFICATION_STATUS, UkCore, verification_status
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.fhir.outcome import operation_outcome
from carelink.fhir.profile_check import check
from carelink.fhir.profiles import load_profiles
from carelink.settings import DEFAULT_SOURCE_ODS, default_profiles_path

PROFILES = load_profiles(Path(default_profiles_path()))
UK = UkCore(PROFILES.by_type(), DEFAULT_SOURCE_ODS, PROFILES.required_by_type())
NHS = "9434765919"
PRACTICE = {"identifier": {"system": ODS_SYSTEM, "value": "A12345"}}
UK_STATUS = {"url": VERIFICATION_STATUS}
CODING = {"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"}


def _patient(pid: str, *ext: dict) -> dict:
    ident = {"system": NHS_NUMBER_SYSTEM, "value": NHS}
    if ext:
        ident["extension"] = list(ext)
    return {"resourceType": "Patient", "id": pid, "identifier": [ident]}


def _status(code: str) -> dict:
    return UK_STATUS | {"valueCodeableConcept": {"coding": [{**CODING, "code": code}]}}


def _shape(*resources: dict) -> list[dict]:
    out, _, _ = UK.shape(list(resources), [], operation_outcome([]))
    return out


def test_a_number_a_source_verified_is_verified_on_the_merged_patient():
    merged, source = _shape(_patient("p"), _patient("gp-1", _status("01")))
    assert verification_status(merged["identifier"][0]) == "01"
    assert check(merged, PROFILES) == []
    assert source["meta"]["profile"] == [PROFILES.by_type()["Patient"]]


def test_a_number_nobody_traced_is_present_but_not_traced():
    (merged,) = _shape(_patient("p"))
    assert verification_status(merged["identifier"][0]) == "02"
    other = _patient("gp-1", _status("01"))
    other["identifier"][0]["value"] = "9876543210"  # verified, but another number
    merged, _ = _shape(_patient("p"), other)
    assert verification_status(merged["identifier"][0]) == "02"


def test_a_status_already_given_is_kept_and_not_doubled():
    (merged,) = _shape(_patient("p", _status("04")))
    assert merged["identifier"][0]["extension"] == [_status("04")]


def test_every_resource_claims_its_profile_and_the_sources_copies_are_untouched():
    condition = {"resourceType": "Condition", "id": "c", "meta": {"source": "urn:x"}}
    before = copy.deepcopy(condition)
    prov = provenance("p", SourceResult("acute", "ok", 1.0, (), "v1"), [], "RAC00")
    out, provs, outcome = UK.shape([_patient("p"), condition], [prov], operation_outcome([]))
    assert condition == before
    assert out[1]["meta"] == {"source": "urn:x", "profile": [PROFILES.by_type()["Condition"]]}
    for r in [*out, *provs, outcome]:
        assert r["meta"]["profile"] == [PROFILES.by_type()[r["resourceType"]]]


def test_no_profile_is_claimed_for_a_resource_missing_what_it_requires():
    request = {"resourceType": "MedicationRequest", "id": "m", "status": "active"}
    _, unclaimed = _shape(_patient("p"), request)
    assert "meta" not in unclaimed
    _, claimed = _shape(_patient("p"), {**request, "substitution": {"allowedBoolean": True}})
    assert claimed["meta"]["profile"]


def test_provenance_names_the_source_by_ods_code_or_by_name_without_one():
    result = SourceResult("acute", "ok", 1.0, (), "v1")
    (agent,) = provenance("p", result, [], "RAC00")["agent"]
    assert agent["who"]["identifier"] == {"system": ODS_SYSTEM, "value": "RAC00"}
    (agent,) = provenance("p", result, [])["agent"]
    assert agent["who"]["identifier"] == {"system": "urn:carelink:source", "value": "acute"}


def test_the_gp_source_is_the_patients_registered_practice():
    patient = {**_patient("p"), "generalPractitioner": [PRACTICE]}
    assert UK.organisation("gp", patient) == "A12345"
    assert UK.organisation("gp", _patient("p")) is None
    assert UK.organisation("acute", patient) == "RAC00"
    assert UK.organisation("hospice", patient) is None
