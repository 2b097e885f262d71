"""Third-party FHIR clients work against the gateway unchanged."""

from __future__ import annotations

from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import System


def _person(system: System):
    return next(p for p in system.population if {"gp", "acute"} <= p.sources)


def test_fhirpy_searches_reads_pages_and_calls_everything(system: System):
    person = _person(system)
    fhir = SyncFHIRClient(system.base)
    found = (
        fhir.resources("Patient")
        .search(identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}")
        .fetch()
    )
    assert len(found) == 1
    patient = found[0]
    assert patient["birthDate"] == person.birth_date.isoformat()
    again = fhir.reference("Patient", patient.id).to_resource()
    assert again["name"][0]["family"] == person.family
    paged = fhir.resources("Encounter").search(patient=patient.id).limit(2).fetch_all()
    count = fhir.resources("Encounter").search(patient=patient.id).count()
    assert len(paged) == count > 0
    everything = fhir.execute(f"Patient/{patient.id}/$everything", method="get")
    assert everything["resourceType"] == "Bundle"
    assert everything["total"] >= count


def test_smart_fhirclient_searches_reads_and_calls_everything(system: System):
    person = _person(system)
    smart = smart_client.FHIRClient(settings={"app_id": "carelink-tests", "api_base": system.base})
    search = Patient.where(struct={"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"})
    patients = list(search.perform_resources_iter(smart.server))
    assert len(patients) == 1
    read = Patient.read(patients[0].id, smart.server)
    assert read.birthDate.isostring == person.birth_date.isoformat()
    raw = smart.server.request_json(f"Patient/{read.id}/$everything?_count=5")
    bundle = Bundle(raw)
    assert bundle.total >= len(bundle.entry)
    assert any(link.relation == "next" for link in bundle.link)
