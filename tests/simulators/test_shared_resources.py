"""The FHIR simulators serving files keep Practitioners, Organizations, Locations ... and
hand them out: by id, by identifier, and with the records that refer to them.

Real HTTP: the simulators run under uvicorn and the real adapters talk to them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from carelink.simulators import acute, gp
from carelink.simulators.base import Behaviour
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from tests.support.servers import run_app

NPI = "http://hl7.org/fhir/sid/us-npi"
NHS = "9434765919"
ORG = "https://example.org/orgs"


def _line(resource: dict) -> str:
    return json.dumps(resource) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A patient whose Encounter names its doctor conditionally, the doctor's role naming
    the doctor and the organisation by identifier, and a doctor nobody refers to."""
    folder = tmp_path_factory.mktemp("shared")
    (folder / "Patient.ndjson").write_text(
        _line(
            {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
            }
        )
    )
    (folder / "Encounter.ndjson").write_text(
        _line(
            {
                "resourceType": "Encounter",
                "id": "e1",
                "subject": {"reference": "Patient/p1"},
                "participant": [{"individual": {"reference": f"Practitioner?identifier={NPI}|7"}}],
                "serviceProvider": {"reference": "Organization/o1"},
            }
        )
    )
    (folder / "Practitioner.ndjson").write_text(
        _line(
            {
                "resourceType": "Practitioner",
                "id": "d7",
                "identifier": [{"system": NPI, "value": "7"}],
            }
        )
        + _line(
            {
                "resourceType": "Practitioner",
                "id": "d8",
                "identifier": [{"system": NPI, "value": "8"}],
            }
        )
    )
    (folder / "Organization.ndjson").write_text(
        _line(
            {
                "resourceType": "Organization",
                "id": "o1",
                "identifier": [{"system": ORG, "value": "1"}],
            }
        )
    )
    (folder / "PractitionerRole.ndjson").write_text(
        _line(
            {
                "resourceType": "PractitionerRole",
                "id": "r1",
                "practitioner": {"identifier": {"system": NPI, "value": "8"}},
            }
        )
    )
    return folder


@pytest.fixture(scope="module")
def acute_url(files: Path) -> Iterator[str]:
    with run_app(acute.create_app_from_files(files, behaviour=Behaviour())) as url:
        yield url


@pytest.fixture(scope="module")
def gp_url(files: Path) -> Iterator[str]:
    with run_app(gp.create_app_from_files(files, behaviour=Behaviour())) as url:
        yield url


def _ids(bundle: dict) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}


def test_everything_includes_what_the_record_refers_to_and_nothing_else(acute_url: str):
    bundle = httpx.get(f"{acute_url}/fhir/Patient/p1/$everything").json()
    assert _ids(bundle) == {"Patient/p1", "Encounter/e1", "Practitioner/d7", "Organization/o1"}
    typed = httpx.get(f"{acute_url}/fhir/Patient/p1/$everything?_type=Encounter,Practitioner")
    assert _ids(typed.json()) == {"Encounter/e1", "Practitioner/d7"}


def test_the_gp_record_carries_what_it_refers_to(gp_url: str):
    url, headers, body = GPConnectSource(None, gp_url).request(NHS, None)  # type: ignore[arg-type]
    bundle = httpx.post(url, content=body, headers=headers).json()
    assert {"Practitioner/d7", "Organization/o1"} <= _ids(bundle)
    assert "Practitioner/d8" not in _ids(bundle)


@pytest.mark.parametrize("prefix", ["/fhir", ""])
def test_shared_resources_are_read_by_id_and_found_by_identifier(
    acute_url: str, gp_url: str, prefix: str
):
    base = (acute_url if prefix else gp_url) + prefix
    assert httpx.get(f"{base}/Practitioner/d8").json()["id"] == "d8"
    assert httpx.get(f"{base}/Practitioner/nobody").status_code == 404
    found = httpx.get(f"{base}/Practitioner", params={"identifier": f"{NPI}|7"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["d7"]
    none = httpx.get(f"{base}/Practitioner", params={"identifier": f"{ORG}|7"}).json()
    assert none["total"] == 0


def test_the_adapters_read_shared_resources_namespaced(acute_url: str, gp_url: str):
    async def go() -> tuple[dict | None, dict | None, dict | None]:
        async with aiohttp.ClientSession() as session:
            hospital = AcuteSource(session, acute_url)
            practice = GPConnectSource(session, gp_url)
            return (
                await hospital.read_shared("PractitionerRole", "r1"),
                await practice.read_shared("Organization", "o1"),
                await hospital.read_shared("Practitioner", "nobody"),
            )

    role, org, missing = asyncio.run(go())
    assert role is not None
    assert role["id"] == "acute-r1"
    assert role["meta"]["source"] == "urn:carelink:source:acute"
    assert role["practitioner"] == {"identifier": {"system": NPI, "value": "8"}}
    assert org is not None
    assert org["id"] == "gp-o1"
    assert missing is None
