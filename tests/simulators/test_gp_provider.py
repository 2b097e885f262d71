"""The GP simulator as a GP Connect provider: it accepts every published request (but
the two the specification's own rules forbid), refuses bad headers, JWTs and parameters
with the specification's codes, and serves its population as STU3 the consumer reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import httpx
import pytest

from carelink.errors import SourceRefused
from carelink.simulators import gp
from carelink.simulators.base import Behaviour
from carelink.simulators.fhir_store import PopulationStore
from carelink.sources.gpconnect import GPConnectSource
from tests.support.schema import problems
from tests.support.servers import run_app

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
REQUESTS = sorted((DATA / "requests").glob("*.json"))
#: published requests a provider must refuse, and why (FACTS.md)
REFUSED = {
    # consultationSearchPeriod with includeNumberOfMostRecent: mutually exclusive
    "retrieve_patient_record__payload_request_body": (422, "INVALID_RESOURCE"),
    # medicationSearchFromDate "today()-365 days": a placeholder on the page, not a date
    "searchMultiAreaSearches__request": (422, "INVALID_PARAMETER"),
    "searchMultiAreaSearches__request_2": (422, "INVALID_PARAMETER"),
}


@pytest.fixture(scope="module")
def sim() -> tuple[str, str]:
    store = PopulationStore("gp", 7, 40)
    local = store.patient_ids()[0]
    nhs = next(
        i["value"]
        for i in store.record(local)[0]["identifier"]
        if i["system"].endswith("nhs-number")
    )
    with run_app(gp.create_app(seed=7, size=40, behaviour=Behaviour())) as url:
        yield url, nhs


def _headers(url: str, nhs: str) -> dict[str, str]:
    _, headers, _ = GPConnectSource(None, url).request(nhs, None)  # type: ignore[arg-type]
    return headers


def _with_nhs(path: Path, nhs: str) -> bytes:
    doc = json.loads(path.read_text())
    for p in doc["parameter"]:
        if p["name"] == "patientNHSNumber":
            p["valueIdentifier"]["value"] = nhs
    return json.dumps(doc).encode()


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_every_published_request_is_accepted(sim, path: Path):
    url, nhs = sim
    headers = _headers(url, nhs)
    if "migrate" in path.stem:
        pytest.skip("$gpc.migratestructuredrecord needs a migration JWT; carelink does not migrate")
    op = "$gpc.getstructuredrecord"
    got = httpx.post(f"{url}/Patient/{op}", content=_with_nhs(path, nhs), headers=headers)
    key = path.stem
    if key in REFUSED:
        status, code = REFUSED[key]
        assert got.status_code == status
        assert got.json()["issue"][0]["details"]["coding"][0]["code"] == code
        return
    assert got.status_code == 200, got.text
    bundle = got.json()
    assert bundle["type"] == "collection"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (
            {"Ssp-InteractionID": "urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1"},
            400,
            "BAD_REQUEST",
        ),
        ({"Ssp-TraceID": "not-a-uuid"}, 400, "BAD_REQUEST"),
        ({"Ssp-From": ""}, 400, "BAD_REQUEST"),
        ({"Authorization": "Bearer abc.def.ghi"}, 400, "BAD_REQUEST"),
        ({"Content-Type": "application/json"}, 415, "415"),
    ],
)
def test_bad_headers_are_refused_as_the_spec_says(sim, change, status, code):
    url, nhs = sim
    headers = {**_headers(url, nhs), **change}
    body = _with_nhs(DATA / "requests/allergies_request1.json", nhs)
    got = httpx.post(f"{url}/Patient/$gpc.getstructuredrecord", content=body, headers=headers)
    assert got.status_code == status
    assert got.json()["issue"][0]["details"]["coding"][0]["code"] == code


@pytest.mark.parametrize(
    ("nhs", "parts", "status", "code"),
    [
        ("c0f9b1de-1d1b-4f5c-9a55-1b2f1c2f0a11", None, 400, "INVALID_NHS_NUMBER"),
        ("9434765918", None, 400, "INVALID_NHS_NUMBER"),
        ("9434765919", None, 404, "PATIENT_NOT_FOUND"),
        (None, [], 422, "INVALID_PARAMETER"),  # includeAllergies without its part
        (
            None,
            [{"name": "includeResolvedAllergies", "valueBoolean": "yes"}],
            422,
            "INVALID_PARAMETER",
        ),
    ],
)
def test_bad_parameters_are_refused_with_spine_codes(sim, nhs, parts, status, code):
    url, known = sim
    doc = json.loads((DATA / "requests/allergies_request1.json").read_text())
    doc["parameter"][0]["valueIdentifier"]["value"] = nhs or known
    if parts is not None:
        doc["parameter"][1]["part"] = parts
    got = httpx.post(
        f"{url}/Patient/$gpc.getstructuredrecord",
        content=json.dumps(doc).encode(),
        headers=_headers(url, known),
    )
    assert got.status_code == status, got.text
    assert got.json()["issue"][0]["details"]["coding"][0]["code"] == code


def test_the_consumer_reads_the_simulated_record_as_valid_r4_and_hears_refusals(sim):
    url, nhs = sim

    async def go():
        async with aiohttp.ClientSession() as session:
            source = GPConnectSource(session, url)
            answer = await source.fetch_record("L", "Patient/merged", None, nhs_number=nhs)
            await session.post(
                f"{url}/_admin/gpconnect", json={"refuse": {nhs: "NO_PATIENT_CONSENT"}}
            )
            try:
                with pytest.raises(SourceRefused, match="NO_PATIENT_CONSENT") as refused:
                    await source.fetch_record("L", "Patient/merged", None, nhs_number=nhs)
            finally:
                await session.post(f"{url}/_admin/gpconnect", json={"refuse": {}})
            return answer, refused.value

    answer, refused = asyncio.run(go())
    assert refused.status == "refused"
    assert answer.skipped == ()
    kinds = {r["resourceType"] for r in answer.resources}
    assert {"Patient", "Condition"} <= kinds
    assert "List" not in kinds  # section Lists folded
    for r in answer.resources:
        assert problems(r) == [], r["resourceType"]


def test_published_example_bundles_are_served_with_data():
    """``--data`` with the published Bundles: found by their Patient's NHS number (the
    pathology example's 9432003812 fails the check digit, so a provider refuses it)."""
    doc = json.loads((DATA / "responses/allergies_response1.json").read_text())
    patient = next(
        e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    nhs = next(i["value"] for i in patient["identifier"] if i["system"].endswith("nhs-number"))
    app = gp.create_app_from_files(DATA / "responses", behaviour=Behaviour())
    with run_app(app) as url:
        body = _with_nhs(DATA / "requests/allergies_request1.json", nhs)
        op = f"{url}/Patient/$gpc.getstructuredrecord"
        got = httpx.post(op, content=body, headers=_headers(url, nhs))
        bad = _with_nhs(DATA / "requests/pathology_request1.json", "9432003812")
        refused = httpx.post(op, content=bad, headers=_headers(url, nhs))
    assert got.status_code == 200, got.text
    assert len(got.json()["entry"]) >= len(doc["entry"])
    assert refused.status_code == 400
