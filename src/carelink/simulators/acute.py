"""The acute hospital EPR: FHIR R4 REST with search and paging.

Endpoints (base ``/fhir``):

- ``GET /metadata``: the CapabilityStatement (FHIR 4.0.1, the types, ``$everything``)
- ``GET /Patient?identifier=system|value`` and ``GET /Patient`` (all, paged)
- ``GET /Patient/{id}``; ``PUT /Patient/{id}`` makes or changes a Patient (a new
  registration, corrected demographics, a merge: ``active`` false with a
  ``replaced-by`` link), ``DELETE /Patient/{id}`` removes one, and
  ``GET /Patient?_lastUpdated=gt<instant>`` lists those changed since, a deleted
  one as an inactive Patient without links (``carelink.simulators.changes``)
- ``GET /Patient/{id}/$everything[?_type=A,B][&_count=N&_offset=M]``
- ``GET /{Type}?patient={id}`` for any type in the patient's compartment
- ``GET /{Type}/{id}`` and ``GET /{Type}?identifier=system|value`` for any
  resource held, shared ones (Practitioner, Organization, Location ...)
  included, so references in a record can be followed

Paging uses ``_count`` / ``_offset`` and ``next`` links, as many EPRs do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.simulators.base import (
    Behaviour,
    ResponseCache,
    admin_routes,
    kept_first,
    unless_down,
    with_behaviour,
)
from carelink.simulators.changes import PatientChanges
from carelink.simulators.fhir_server import (
    bad_request,
    capability,
    fhir_response,
    identifier_search,
    int_param,
    not_found,
    page_links,
    resource_read,
    searchset,
)
from carelink.simulators.fhir_store import FhirStore, FileStore, PopulationStore
from carelink.simulators.shared import SharedStore, referenced

MAX_PAGE = 1000
#: named in the CapabilityStatement (any type in a record is served, these are the usual)
SERVED_TYPES = (
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "AllergyIntolerance",
    "Procedure",
    "Practitioner",
    "Organization",
    "Location",
)
Json = dict[str, Any]


def create_app(*, seed: int, size: int, behaviour: Behaviour) -> Starlette:
    """The acute simulator serving its slice of the synthetic population."""
    return build(PopulationStore("acute", seed, size), behaviour)


def create_app_from_files(path: Path, *, behaviour: Behaviour) -> Starlette:
    """The acute simulator serving FHIR R4 NDJSON files or Bundles from ``path``.

    ``app.state.load_report`` says what was loaded and what was skipped, and why.
    """
    store = FileStore(path)
    app = build(store, behaviour)
    app.state.load_report = store.report
    return app


def build(store: FhirStore, behaviour: Behaviour) -> Starlette:
    """Wire the routes over ``store``."""

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    cache = ResponseCache()
    # an answer kept from before a change is not served after it
    changes = PatientChanges(on_change=cache.items.clear)

    def patient(local: str) -> Json | None:
        return changes.patient(local, store.patient)

    async def patients(request: Request) -> Response:
        q = request.query_params
        try:
            count = int_param(q.get("_count"), 100, MAX_PAGE)
            offset = int_param(q.get("_offset"), 0, 10**9)
        except ValueError:
            return bad_request("_count and _offset must be non-negative integers")
        ident = q.get("identifier")
        since = q.get("_lastUpdated", "")
        if ident is not None:
            system, _, value = ident.rpartition("|")
            hit = store.find(system or None, value)
            ids = [hit] if hit else []
            url = f"{base(request)}/Patient?identifier={ident}"
        elif since:
            if not since.startswith("gt"):
                return bad_request("_lastUpdated takes gt<instant>")
            try:
                ids = [c.local for c in changes.since(since[2:])]
            except ValueError:
                return bad_request("_lastUpdated takes gt<instant>")
            url = f"{base(request)}/Patient?_lastUpdated={quote(since, safe='')}"
        else:
            ids = changes.listed(store.patient_ids())
            url = f"{base(request)}/Patient"
        page = ids[offset : offset + count]
        resources = [p for i in page if (p := patient(i) or gone(i))]
        return fhir_response(
            searchset(base(request), resources, len(ids), page_links(url, offset, count, len(ids)))
        )

    def current_record(local: str) -> list[Json] | None:
        """The person's record as the EPR holds it now: the Patient as last changed (a
        person registered since start has only that), none once deleted."""
        rec = store.record(local)
        changed = changes.latest.get(local)
        if changed is None:
            return rec
        if changed.patient is None:
            return None
        return [changed.patient, *(r for r in rec or () if r["resourceType"] != "Patient")]

    def gone(local: str) -> Json:
        """A deleted Patient as a change listing shows it: inactive, nothing more."""
        return {"resourceType": "Patient", "id": local, "active": False}

    async def read(request: Request) -> Response:
        found = patient(request.path_params["id"])
        return fhir_response(found) if found else not_found("Patient")

    async def put(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return bad_request("body is not JSON")
        if not isinstance(body, dict) or body.get("resourceType") != "Patient":
            return bad_request("body must be a Patient")
        local = request.path_params["id"]
        created = patient(local) is None
        return fhir_response(changes.put(local, body), status=201 if created else 200)

    async def delete(request: Request) -> Response:
        changes.delete(request.path_params["id"])
        return Response(status_code=204)

    async def everything(request: Request) -> Response:
        pid = request.path_params["id"]
        rec = current_record(pid)
        if rec is None:
            return not_found("Patient")
        q = request.query_params
        types = set(q["_type"].split(",")) if q.get("_type") else None
        items = [r for r in rec if types is None or r["resourceType"] in types]
        if isinstance(store, SharedStore):
            if pid not in shared_of:  # every page of $everything needs them
                shared_of[pid] = referenced(store, rec)
            items += [r for r in shared_of[pid] if types is None or r["resourceType"] in types]
        try:
            count = int_param(q.get("_count"), MAX_PAGE, MAX_PAGE)
            offset = int_param(q.get("_offset"), 0, 10**9)
        except ValueError:
            return bad_request("_count and _offset must be non-negative integers")
        url = f"{base(request)}/Patient/{pid}/$everything"
        if types:
            url += "?_type=" + ",".join(sorted(types))
        return fhir_response(
            searchset(
                base(request),
                items[offset : offset + count],
                len(items),
                page_links(url, offset, count, len(items)),
            )
        )

    async def by_type(request: Request) -> Response:
        rtype = request.path_params["type"]
        pid = request.query_params.get("patient", "").removeprefix("Patient/")
        if not pid and "identifier" in request.query_params:
            return identifier_search(request, store, base(request))
        if not pid:
            return bad_request(f"{rtype} search needs a patient or identifier parameter")
        rec = current_record(pid) or []
        items = [r for r in rec[1:] if r["resourceType"] == rtype]
        url = f"{base(request)}/{rtype}?patient={pid}"
        return fhir_response(
            searchset(
                base(request), items, len(items), page_links(url, 0, len(items) or 1, len(items))
            )
        )

    shared_of: dict[str, list[Json]] = {}  # the files do not change while served
    metadata = capability(
        "carelink acute EPR simulator",
        "4.0.1",
        ["Patient", *SERVED_TYPES],
        [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            }
        ],
    )
    routes = [
        Route("/fhir/metadata", unless_down(behaviour, metadata)),
        Route("/fhir/Patient", with_behaviour(behaviour, patients)),
        Route("/fhir/Patient/{id}/$everything", with_behaviour(behaviour, everything, cache=cache)),
        Route("/fhir/Patient/{id}", with_behaviour(behaviour, read)),
        Route("/fhir/Patient/{id}", put, methods=["PUT"]),
        Route("/fhir/Patient/{id}", delete, methods=["DELETE"]),
        Route("/fhir/{type}/{id}", with_behaviour(behaviour, resource_read(store))),
        Route("/fhir/{type}", with_behaviour(behaviour, by_type)),
        *admin_routes(behaviour),
    ]
    return Starlette(routes=routes, middleware=[kept_first(behaviour, cache)])
