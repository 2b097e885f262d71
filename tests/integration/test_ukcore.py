"""What the gateway emits is UK Core-shaped: every resource of a federated record claims
its UK Core profile and meets it (the checker in ``carelink.fhir.profile_check``) and the
R4 JSON schema, for a person of the demo population and for a tester's Synthea person."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.fhir.profile_check import check
from carelink.fhir.profiles import load_profiles
from carelink.settings import DEFAULT_SOURCE_ODS, default_profiles_path
from tests.integration.conftest import System
from tests.support.files_system import files_system
from tests.support.schema import problems
from tests.support.shared import SYNTHEA

PROFILES = load_profiles(Path(default_profiles_path()))
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
#: what the sources send that UK Core (STU2) has no profile for: social care assessments
UNPROFILED = {"ClinicalImpression"}
STATUS = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"


def _everything(client: httpx.Client, base: str, pid: str) -> list[dict[str, Any]]:
    """Every entry of the person's $everything, page by page."""
    out: list[dict[str, Any]] = []
    url: str | None = f"{base}/Patient/{pid}/$everything?_count=1000"
    while url:
        page = client.get(url).json()
        out += [e["resource"] for e in page["entry"]]
        # the Bundle's own shape; its resources are checked one by one (much faster)
        shell = {
            **page,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in page["entry"]],
        }
        assert problems(shell) == []
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    return out


def _synthea_patients() -> list[str]:
    lines = (SYNTHEA / "Patient.000.ndjson").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines]


def _nonconformance(resources: list[dict[str, Any]]) -> list[str]:
    """Schema and UK Core problems of every resource, and a line for each that does not
    claim its type's UK Core profile."""
    out: list[str] = []
    for r in resources:
        label = f"{r['resourceType']}/{r['id']}"
        out += problems(r)
        claimed = r.get("meta", {}).get("profile", [])
        profile = PROFILES.profile_for(r["resourceType"])
        if profile is None and r["resourceType"] in UNPROFILED and not claimed:
            continue  # UK Core has no profile for it: valid R4 is all there is to meet
        if profile not in claimed:  # a source's own claims (US Core in Synthea's) stay
            out.append(f"{label}: does not claim {profile}")
        else:
            out += check(r, PROFILES, profile)
    return out


def test_a_demo_persons_whole_record_claims_and_meets_uk_core(system: System):
    person = max(
        (p for p in system.population if {"gp", "acute", "community", "social-care"} <= p.sources),
        key=lambda p: p.age,
    )
    with httpx.Client(timeout=30) as client:
        found = client.get(
            f"{system.base}/Patient",
            params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        ).json()
        pid = found["entry"][0]["resource"]["id"]
        resources = _everything(client, system.base, pid)
    types = {r["resourceType"] for r in resources}
    assert {"Patient", "Observation", "Condition", "Provenance", "OperationOutcome"} <= types
    assert _nonconformance(resources) == []
    merged = next(r for r in resources if r["id"] == pid)
    (nhs,) = [i for i in merged["identifier"] if i["system"] == NHS_NUMBER_SYSTEM]
    (status,) = [e for e in nhs["extension"] if e["url"] == STATUS]
    assert status["valueCodeableConcept"]["coding"][0]["code"] == "01"  # the GP verified it
    authors = {
        p["agent"][0]["who"]["identifier"]["value"]
        for p in resources
        if p["resourceType"] == "Provenance"
    }
    practice = merged["generalPractitioner"][0]["identifier"]["value"]
    wanted = {DEFAULT_SOURCE_ODS[s] for s in ("acute", "community", "social-care")} | {practice}
    assert authors == wanted
    for p in resources:
        if p["resourceType"] == "Provenance":
            assert p["agent"][0]["who"]["identifier"]["system"] == ODS


def test_gp_and_community_observations_carry_snomed_ct(system: System):
    person = next(p for p in system.population if {"gp", "community"} <= p.sources)
    with httpx.Client(timeout=30) as client:
        found = client.get(
            f"{system.base}/Patient",
            params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"},
        ).json()
        pid = found["entry"][0]["resource"]["id"]
        resources = _everything(client, system.base, pid)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        if r["resourceType"] in ("Observation", "Condition"):
            by_source.setdefault(r["meta"]["source"].rsplit(":", 1)[-1], []).append(r)
    assert {"gp", "community"} <= set(by_source)
    for source in ("gp", "community"):
        for r in by_source[source]:
            systems = [c["system"] for c in r["code"]["coding"]]
            assert systems[0] == "http://snomed.info/sct", r
            if r["resourceType"] == "Observation":
                assert "http://loinc.org" in systems, r


def test_the_capability_statement_names_the_profile_of_each_resource(system: System):
    cs = httpx.get(f"{system.base}/metadata", timeout=30).json()
    listed = {r["type"]: r.get("supportedProfile") for r in cs["rest"][0]["resource"]}
    for rtype in ("Patient", "Observation", "Condition", "Encounter", "MedicationRequest"):
        assert listed[rtype] == [PROFILES.by_type()[rtype]]
    assert listed["Consent"] is None  # no UK Core Consent profile is claimed


@pytest.mark.slow
@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared Synthea sample not present")
def test_a_synthea_persons_record_meets_uk_core_where_the_data_allows(tmp_path: Path):
    with (
        files_system({"acute": SYNTHEA}, tmp_path) as fs,
        httpx.Client(timeout=30) as client,
    ):
        base = fs.base
        pids = []
        for local in _synthea_patients()[:3]:
            found = client.get(
                f"{base}/Patient",
                params={"identifier": f"https://carelink.example/Id/acute|{local}"},
            ).json()
            pids.append(found["entry"][0]["resource"]["id"])
        resources = [r for pid in pids[:3] for r in _everything(client, base, pid)]
    assert len(resources) > 100
    unmet = _nonconformance(resources)
    # Synthea's MedicationRequests have no substitution, which UK Core requires (1..1): the
    # gateway does not invent it, so it claims no profile for them. Nothing else falls short.
    requests = {
        f"MedicationRequest/{r['id']}: does not claim {PROFILES.profile_for('MedicationRequest')}"
        for r in resources
        if r["resourceType"] == "MedicationRequest" and "substitution" not in r
    }
    assert requests
    assert set(unmet) == requests
    assert len(unmet) == len(requests)
