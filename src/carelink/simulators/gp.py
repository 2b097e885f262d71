"""The GP system: GP Connect Access Record: Structured, in its style.

- ``POST /$gpc.getstructuredrecord`` with a ``Parameters`` body naming the
  patient (``patientNHSNumber``, a ``valueIdentifier``) and optional
  ``include*`` parameters; the answer is a ``collection`` Bundle holding the
  Patient and the requested clinical areas.
- ``GET /Patient?identifier=...`` and ``GET /Patient`` (paged, the practice
  list), so an index can enumerate registered patients.
- ``GET /{Type}/{id}`` and ``GET /{Type}?identifier=system|value`` for any
  resource held (Practitioner, Organization, Location ... as GP Connect's
  Foundations reads do), so references in a record can be followed.

Clinical areas and the resource types they return: includeAllergies
(AllergyIntolerance), includeMedication (MedicationStatement,
MedicationRequest), includeConsultations (Encounter), includeProblems
(Condition), includeImmunisations (Immunization), includeInvestigations
(Observation), includeReferrals (ServiceRequest), includeCarePlans (CarePlan).
No include parameter means every area. When serving files, the Bundle also
carries the Practitioners, Organizations, Locations ... the record refers to
(as GP Connect's does), and ``GET /{Type}/{id}`` / ``GET /{Type}?identifier=``
read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.base import Behaviour, ResponseCache, admin_routes, with_behaviour
from carelink.simulators.fhir_server import (
    bad_request,
    fhir_response,
    full_url,
    identifier_search,
    int_param,
    not_found,
    page_links,
    resource_read,
    searchset,
)
from carelink.simulators.fhir_store import FhirStore, FileStore, PopulationStore
from carelink.simulators.shared import SharedStore, referenced

AREAS: dict[str, tuple[str, ...]] = {
    "includeAllergies": ("AllergyIntolerance",),
    "includeMedication": ("MedicationStatement", "MedicationRequest"),
    "includeConsultations": ("Encounter",),
    "includeProblems": ("Condition",),
    "includeImmunisations": ("Immunization",),
    "includeInvestigations": ("Observation", "DiagnosticReport"),
    "includeReferrals": ("ServiceRequest",),
    "includeCarePlans": ("CarePlan",),
}


def create_app(*, seed: int, size: int, behaviour: Behaviour) -> Starlette:
    """The GP simulator serving its slice of the synthetic population."""
    return build(PopulationStore("gp", seed, size), behaviour)


def create_app_from_files(path: Path, *, behaviour: Behaviour) -> Starlette:
    """The GP simulator serving FHIR R4 NDJSON files or Bundles from ``path``.

    ``app.state.load_report`` says what was loaded and what was skipped, and why.
    """
    store = FileStore(path)
    app = build(store, behaviour)
    app.state.load_report = store.report
    return app


def _parse(body: bytes) -> tuple[str, set[str] | None] | str:
    try:
        params: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not JSON"
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        return "body must be a Parameters resource"
    nhs: str | None = None
    areas: set[str] = set()
    for p in params.get("parameter", []):
        name = p.get("name")
        if name == "patientNHSNumber":
            ident = p.get("valueIdentifier", {})
            if ident.get("system") == NHS_NUMBER_SYSTEM:
                nhs = ident.get("value")
        elif name in AREAS:
            areas.update(AREAS[name])
    if not nhs:
        return "patientNHSNumber with system " + NHS_NUMBER_SYSTEM + " is required"
    return nhs, (areas or None)


def build(store: FhirStore, behaviour: Behaviour) -> Starlette:
    """Wire the routes over ``store``."""

    async def structured(request: Request) -> Response:
        parsed = _parse(await request.body())
        if isinstance(parsed, str):
            return bad_request(parsed)
        nhs, types = parsed
        local = store.find(NHS_NUMBER_SYSTEM, nhs) or store.find(None, nhs)
        rec = store.record(local) if local else None
        if rec is None:
            return not_found("Patient")
        items = [rec[0]] + [r for r in rec[1:] if types is None or r["resourceType"] in types]
        if isinstance(store, SharedStore):
            items += referenced(store, items)
        base = str(request.base_url).rstrip("/")
        return fhir_response(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "meta": {
                    "profile": [
                        "https://fhir.nhs.uk/STU3/StructureDefinition/GPConnect-StructuredRecord-Bundle-1"
                    ]
                },
                "entry": [{**full_url(base, r), "resource": r} for r in items],
            }
        )

    async def patients(request: Request) -> Response:
        q = request.query_params
        try:
            count = int_param(q.get("_count"), 100, 1000)
            offset = int_param(q.get("_offset"), 0, 10**9)
        except ValueError:
            return bad_request("_count and _offset must be non-negative integers")
        base = str(request.base_url).rstrip("/")
        ident = q.get("identifier")
        if ident is not None:
            system, _, value = ident.rpartition("|")
            hit = store.find(system or None, value)
            ids = [hit] if hit else []
        else:
            ids = store.patient_ids()
        page = ids[offset : offset + count]
        resources = [p for i in page if (p := store.patient(i))]
        return fhir_response(
            searchset(
                base, resources, len(ids), page_links(f"{base}/Patient", offset, count, len(ids))
            )
        )

    async def by_identifier(request: Request) -> Response:
        return identifier_search(request, store, str(request.base_url).rstrip("/"))

    cache = ResponseCache()
    routes = [
        Route(
            "/$gpc.getstructuredrecord",
            with_behaviour(behaviour, structured, cache=cache),
            methods=["POST"],
        ),
        Route("/Patient", with_behaviour(behaviour, patients)),
        *admin_routes(behaviour),
        Route("/{type}/{id}", with_behaviour(behaviour, resource_read(store))),
        Route("/{type}", with_behaviour(behaviour, by_identifier)),
    ]
    return Starlette(routes=routes)
