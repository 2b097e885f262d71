"""The FHIR API against the real gateway and four real simulators."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import Person
from tests.integration.conftest import System


def lookup(system: System, person: Person) -> dict:
    r = httpx.get(
        f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    return r.json()


def person_in(system: System, *sources: str) -> Person:
    return next(
        p for p in system.population if set(sources) <= p.sources and p.social_variant is None
    )


def gateway_id(system: System, person: Person) -> str:
    bundle = lookup(system, person)
    return bundle["entry"][0]["resource"]["id"]


def test_lookup_by_nhs_number_returns_one_merged_patient_linking_each_source(system):
    person = person_in(system, "gp", "acute", "community")
    bundle = lookup(system, person)
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    patient = bundle["entry"][0]["resource"]
    nhs = [i for i in patient["identifier"] if i["system"] == NHS_NUMBER_SYSTEM]
    assert [i["value"] for i in nhs] == [person.nhs_number]
    assert nhs[0]["extension"][0]["url"].endswith("Extension-UKCore-NHSNumberVerificationStatus")
    assert patient["name"][0]["family"] == person.family
    assert patient["birthDate"] == person.birth_date.isoformat()
    linked = {link["other"]["reference"].split("/")[1].split("-")[0] for link in patient["link"]}
    assert linked == {s if s != "social-care" else "social" for s in person.sources}


def test_lookup_of_unknown_valid_nhs_number_is_an_empty_searchset(system):
    known = {p.nhs_number for p in system.population}
    unknown = next(n for n in ("9434765919", "9990000018", "9990000026") if n not in known)
    r = httpx.get(f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{unknown}"})
    assert r.status_code == 200
    assert r.json()["total"] == 0


@pytest.mark.parametrize("bad", ["9434765918", "943476591", "94347659199", "abcdefghij"])
def test_bad_nhs_number_is_a_400_naming_the_parameter(system, bad):
    r = httpx.get(f"{system.base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{bad}"})
    assert r.status_code == 400
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["expression"] == ["identifier"]
    assert bad not in r.text or "identifier" in oo["issue"][0]["diagnostics"]


def test_unknown_patient_is_404_operation_outcome(system):
    r = httpx.get(f"{system.base}/Patient/does-not-exist")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    r = httpx.get(f"{system.base}/Patient/does-not-exist/$everything")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"_format": "xml"}, {}),
        ({"_format": "application/fhir+xml"}, {}),
        ({}, {"Accept": "application/fhir+xml"}),
    ],
)
def test_unsupported_format_is_406(system, params, headers):
    r = httpx.get(f"{system.base}/metadata", params=params, headers=headers)
    assert r.status_code == 406
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unknown_parameter_is_ignored_when_lenient_and_refused_when_strict(system):
    person = person_in(system, "gp")
    params = {"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}", "colour": "blue"}
    lenient = httpx.get(f"{system.base}/Patient", params=params)
    assert lenient.status_code == 200
    assert lenient.json()["total"] == 1
    assert "colour" not in lenient.json()["link"][0]["url"]
    strict = httpx.get(
        f"{system.base}/Patient", params=params, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["expression"] == ["colour"]


def test_read_has_etag_and_last_modified_and_answers_304(system):
    pid = gateway_id(system, person_in(system, "gp"))
    r = httpx.get(f"{system.base}/Patient/{pid}")
    assert r.status_code == 200
    assert r.headers["etag"].startswith('W/"')
    assert "last-modified" in r.headers
    again = httpx.get(f"{system.base}/Patient/{pid}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    other = httpx.get(f"{system.base}/Patient/{pid}", headers={"If-None-Match": 'W/"other"'})
    assert other.status_code == 200


def test_source_patients_are_readable_and_link_back(system):
    person = person_in(system, "gp", "acute")
    patient = lookup(system, person)["entry"][0]["resource"]
    for link in patient["link"]:
        r = httpx.get(f"{system.base}/{link['other']['reference']}")
        assert r.status_code == 200
        assert r.json()["link"][0]["other"]["reference"] == f"Patient/{patient['id']}"


def test_search_by_name_and_birthdate(system):
    person = person_in(system, "gp")
    r = httpx.get(
        f"{system.base}/Patient",
        params={
            "family": person.family.lower(),
            "given": person.given[:3],
            "birthdate": person.birth_date.isoformat(),
        },
    )
    assert r.status_code == 200
    ids = [e["resource"]["identifier"][0]["value"] for e in r.json()["entry"]]
    assert person.nhs_number in ids
    r = httpx.get(
        f"{system.base}/Patient",
        params={"family": person.family, "birthdate": f"gt{person.birth_date.isoformat()}"},
    )
    assert person.nhs_number not in [
        e["resource"]["identifier"][0]["value"] for e in r.json()["entry"]
    ]


def test_everything_merges_all_sources_with_per_source_outcome_and_provenance(system):
    person = person_in(system, "gp", "acute", "community", "social-care")
    pid = gateway_id(system, person)
    r = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000})
    assert r.status_code == 200
    bundle = r.json()
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Encounter", "Provenance", "OperationOutcome"} <= kinds
    sources = {
        e["resource"].get("meta", {}).get("source")
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
    }
    assert {f"urn:carelink:source:{s}" for s in person.sources} <= sources
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    statuses = {i["details"]["coding"][0]["code"] for i in outcome["issue"]}
    assert statuses == {"ok"}
    assert len(outcome["issue"]) == 4
    refs = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    for e in bundle["entry"]:
        for ref in _references(e["resource"]):
            if ref.startswith("Patient/") or ref.startswith("Encounter/"):
                assert ref in refs, f"unresolvable {ref}"


def _references(value):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def test_everything_ids_never_collide_across_sources(system):
    person = person_in(system, "gp", "acute")
    pid = gateway_id(system, person)
    bundle = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000}).json()
    keys = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert len(keys) == len(set(keys))


def test_everything_pages_are_stable_and_complete(system):
    person = person_in(system, "gp", "acute")
    pid = gateway_id(system, person)
    whole = httpx.get(f"{system.base}/Patient/{pid}/$everything", params={"_count": 1000}).json()
    expected = [e["fullUrl"] for e in whole["entry"] if e["search"]["mode"] == "match"]
    seen: list[str] = []
    url = f"{system.base}/Patient/{pid}/$everything?_count=7"
    while url:
        page = httpx.get(url).json()
        assert page["total"] == whole["total"]
        seen.extend(e["fullUrl"] for e in page["entry"] if e["search"]["mode"] == "match")
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    assert seen == expected


def test_everything_type_and_period_filters(system):
    person = person_in(system, "gp", "acute")
    pid = gateway_id(system, person)
    only = httpx.get(
        f"{system.base}/Patient/{pid}/$everything", params={"_type": "Encounter", "_count": 1000}
    ).json()
    assert {
        e["resource"]["resourceType"] for e in only["entry"] if e["search"]["mode"] == "match"
    } == {"Encounter"}
    late = httpx.get(
        f"{system.base}/Patient/{pid}/$everything",
        params={"_type": "Encounter", "start": "2099-01-01"},
    ).json()
    assert late["total"] == 0


def test_everything_etag_answers_304_until_data_changes(system):
    pid = gateway_id(system, person_in(system, "gp", "acute"))
    url = f"{system.base}/Patient/{pid}/$everything"
    first = httpx.get(url)
    etag = first.headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    time.sleep(1.1)  # the sources answer "as of now": a new second is not new data
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    system.faults("acute", error_rate=1.0)
    try:
        changed = httpx.get(url, headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
    finally:
        system.heal()


@pytest.mark.parametrize(
    ("rtype", "params", "check"),
    [
        (
            "Observation",
            {"category": "vital-signs"},
            lambda r: r["category"][0]["coding"][0]["code"] == "vital-signs",
        ),
        (
            "Observation",
            {"code": "http://snomed.info/sct|75367002"},
            lambda r: r["code"]["coding"][0]["code"] == "75367002",
        ),
        (  # primary care records SNOMED CT; the LOINC coding alongside still finds it
            "Observation",
            {"code": "http://loinc.org|85354-9"},
            lambda r: any(c["code"] == "85354-9" for c in r["code"]["coding"]),
        ),
        ("Observation", {"date": "ge2020-01-01"}, lambda r: r["effectiveDateTime"] >= "2020-01-01"),
        ("Encounter", {}, lambda r: r["resourceType"] == "Encounter"),
        ("Condition", {}, lambda r: r["resourceType"] == "Condition"),
        ("Immunization", {}, lambda r: r["resourceType"] == "Immunization"),
    ],
)
def test_per_type_search_filters_within_the_patient(system, rtype, params, check):
    person = max(system.population, key=lambda p: (len(p.sources), p.age))
    pid = gateway_id(system, person)
    r = httpx.get(f"{system.base}/{rtype}", params={"patient": pid, **params, "_count": 500})
    assert r.status_code == 200, r.text
    matches = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    assert all(check(m) for m in matches)
    assert r.json()["total"] == len(matches)


def test_summary_count_and_elements(system):
    person = max(system.population, key=lambda p: (len(p.sources), p.age))
    pid = gateway_id(system, person)
    full = httpx.get(f"{system.base}/Encounter", params={"patient": pid, "_count": 500}).json()
    count = httpx.get(
        f"{system.base}/Encounter", params={"patient": pid, "_summary": "count"}
    ).json()
    assert count["total"] == full["total"] > 0
    assert count["entry"] == []
    slim = httpx.get(
        f"{system.base}/Encounter", params={"patient": pid, "_elements": "status"}
    ).json()
    first = next(e["resource"] for e in slim["entry"] if e["search"]["mode"] == "match")
    assert set(first) <= {"resourceType", "id", "meta", "status"}
    assert any(t["code"] == "SUBSETTED" for t in first["meta"]["tag"])


def test_per_type_search_without_patient_is_400(system):
    r = httpx.get(f"{system.base}/Observation")
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["patient"]


def test_bad_date_is_400_naming_the_parameter(system):
    pid = gateway_id(system, person_in(system, "gp"))
    r = httpx.get(f"{system.base}/Observation", params={"patient": pid, "date": "yesterday"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["date"]


def test_pixm_maps_a_local_id_to_the_nhs_number_and_other_sources(system):
    person = person_in(system, "gp", "acute")
    patient = lookup(system, person)["entry"][0]["resource"]
    acute_id = next(i for i in patient["identifier"] if i["system"].endswith("/acute"))
    r = httpx.get(
        f"{system.base}/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{acute_id['system']}|{acute_id['value']}"},
    )
    assert r.status_code == 200
    out = r.json()
    idents = [p["valueIdentifier"] for p in out["parameter"] if p["name"] == "targetIdentifier"]
    assert {"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number} in idents
    assert any(i["system"].endswith("/gp") for i in idents)
    assert acute_id not in idents
    missing = httpx.get(
        f"{system.base}/Patient/$ihe-pix", params={"sourceIdentifier": f"{acute_id['system']}|nope"}
    )
    assert missing.status_code == 404


def test_capability_statement_lists_what_is_supported(system):
    cs = httpx.get(f"{system.base}/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in cs["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Encounter", "Flag", "DocumentReference"} <= types


def test_pixm_answers_a_post_with_a_parameters_body_as_it_answers_a_get(system):
    person = person_in(system, "gp", "acute")
    acute_id = next(
        i
        for i in lookup(system, person)["entry"][0]["resource"]["identifier"]
        if i["system"].endswith("/acute")
    )
    got = httpx.get(
        f"{system.base}/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{acute_id['system']}|{acute_id['value']}"},
    )
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "sourceIdentifier",
                "valueIdentifier": {"system": acute_id["system"], "value": acute_id["value"]},
            }
        ],
    }
    posted = httpx.post(
        f"{system.base}/Patient/$ihe-pix",
        content=json.dumps(body),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert got.status_code == posted.status_code == 200, posted.text
    assert posted.json() == got.json()
    bad = httpx.post(
        f"{system.base}/Patient/$ihe-pix",
        content=json.dumps(
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "sourceIdentifier", "valueIdentifier": {"system": "x"}}],
            }
        ),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert bad.status_code == 400
