"""The GP system: a GP Connect Access Record: Structured 1.6 provider.

- ``POST /Patient/$gpc.getstructuredrecord``: checks what a provider (and the
  Spine Secure Proxy before it) checks: the media type, the four ``Ssp-*``
  headers, the unsigned JWT and its claims, the STU3 ``Parameters``
  (``gpconnect_checks``); answers with the specification's HTTP statuses and
  Spine codes (``INVALID_NHS_NUMBER`` 400, ``PATIENT_NOT_FOUND`` 404,
  ``INVALID_PARAMETER`` 422 ...), or with an STU3 ``collection`` Bundle laid out
  as the published examples are (``stu3_render``): only the areas asked for,
  section Lists, the resources referred to, and an ``OperationOutcome`` warning
  for each parameter it does not recognise.
- ``POST /Patient/$gpc.migratestructuredrecord``: the same checks with
  ``reason_for_request`` migration; the full record.
- ``GET /metadata``: the provider's STU3 CapabilityStatement (Foundations "read
  metadata"), naming both operations.
- ``GET /Patient`` (paged, the practice list) and ``GET /{Type}/{id}``,
  ``GET /{Type}?identifier=``: simulator conveniences for the index build and
  Foundations-style reads, in STU3.
- ``GET /Bundle?_lastUpdated=gt<instant>[&_count=N&_offset=M]``: the practice's
  registration events since ``instant``, oldest first, one per person (their
  latest), each an STU3 ``message`` Bundle after the manner of the NEMS events a
  practice system publishes: a ``MessageHeader`` whose ``event`` says what happened
  (``registration``, ``demographics-change``, ``merge``, ``deregistration``, in
  ``EVENT_SYSTEM``) and the Patient as it is now (a merged record inactive with a
  ``replaced-by`` link; a superseded NHS number kept with ``use`` ``old``; a
  deregistered one inactive and bare). GP Connect itself has no "changed since"
  search; a consumer keeping an index current subscribes to such events. People
  are changed at run time through ``/_admin/patients/{id}``
  (``carelink.simulators.changes``).
- ``POST /_admin/gpconnect`` ``{"refuse": {"<NHS number>": "NO_PATIENT_CONSENT"}}``:
  make the provider answer a patient with an error code, as a practice where the
  patient dissented (or access is off) would.

``--data`` serves R4 files (rendered as STU3) or, when the folder holds GP Connect
structured record Bundles (such as the published examples), those Bundles as they
are, found by their Patient's NHS number.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.fhir.gpconnect import (
    BUNDLE_PROFILE,
    GROUPS,
    INTERACTION_ID,
    MIGRATE_INTERACTION_ID,
    MIGRATE_OPERATION,
    OPERATION,
    SPINE_ERRORS,
    spine_outcome,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.base import (
    Behaviour,
    HeaderMap,
    PostsFirst,
    RawHandler,
    admin_routes,
    etag_for,
    http_now,
    read_body,
    send_answer,
    unless_down,
    with_behaviour,
)
from carelink.simulators.changes import Changed, PatientChanges
from carelink.simulators.changes import admin_routes as change_routes
from carelink.simulators.fhir_server import (
    bad_request,
    capability,
    fhir_response,
    identifier_search,
    int_param,
    page_links,
    searchset,
)
from carelink.simulators.fhir_store import FhirStore, FileStore, PopulationStore
from carelink.simulators.gpconnect_checks import (
    Asked,
    Refusal,
    check_headers,
    check_parameters,
    warning_outcome,
)
from carelink.simulators.shared import SharedStore, referenced
from carelink.simulators.stu3_render import RenderedBundles, down, sent_as_is

Json = dict[str, Any]
FHIR = "application/fhir+json; charset=utf-8"
#: the media type of a record answered (``fhir_server.fhir_response``'s)
FHIR_JSON = "application/fhir+json"
#: an answer: status, body, media type and the headers before length and type
Answer = tuple[int, bytes, str, list[tuple[bytes, bytes]]]
#: what a GP event message says happened (``MessageHeader.event``)
EVENT_SYSTEM = "https://carelink.example/CodeSystem/gp-registration-event"
STRUCTURED_DEFINITION = (
    "https://fhir.nhs.uk/STU3/OperationDefinition/GPConnect-GetStructuredRecord-Operation-1"
)
MIGRATE_DEFINITION = (
    "https://fhir.nhs.uk/STU3/OperationDefinition/GPConnect-MigrateStructuredRecord-Operation-1"
)


def create_app(*, seed: int, size: int, behaviour: Behaviour) -> Starlette:
    """The GP simulator serving its slice of the synthetic population."""
    return build(PopulationStore("gp", seed, size), behaviour)


def _examples(path: Path) -> dict[str, list[Json]]:
    """GP Connect structured record Bundles under ``path``, their entries by NHS number."""
    out: dict[str, list[Json]] = {}
    for f in sorted(path.glob("*.json")):
        try:
            doc = orjson.loads(f.read_bytes())
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or BUNDLE_PROFILE not in (doc.get("meta") or {}).get(
            "profile", []
        ):
            continue
        entries = doc.get("entry", [])
        for e in entries:
            r = e.get("resource", e) if isinstance(e, dict) else None
            if isinstance(r, dict) and r.get("resourceType") == "Patient":
                for i in r.get("identifier", []):
                    if i.get("system") == NHS_NUMBER_SYSTEM:
                        out.setdefault(i["value"], []).extend(entries)
    return out


def create_app_from_files(path: Path, *, behaviour: Behaviour) -> Starlette:
    """The GP simulator serving ``path``: GP Connect Bundles as published, else FHIR R4
    NDJSON files or Bundles (``app.state.load_report`` says what was loaded and skipped)."""
    examples = _examples(path)
    store = FileStore(path)
    app = build(store, behaviour, examples or None)
    app.state.load_report = store.report
    return app


def _error(refusal: Refusal) -> Response:
    return Response(orjson.dumps(refusal.outcome), status_code=refusal.status, media_type=FHIR)


def _refused(refusal: Refusal) -> Answer:
    """``_error(refusal)`` as an ``Answer``."""
    return refusal.status, orjson.dumps(refusal.outcome), FHIR, []


def _stamped(tag: str) -> list[tuple[bytes, bytes]]:
    """A record's ``ETag`` and ``Last-Modified`` (``fhir_server.fhir_response``'s)."""
    return [(b"etag", tag.encode("latin-1")), (b"last-modified", http_now().encode("latin-1"))]


def _today() -> Any:
    return datetime.now(UTC).date()


def event_message(change: Changed, known: bool) -> Json:
    """One registration event as an STU3 ``message`` Bundle (MessageHeader, Patient)."""
    if change.patient is None:
        code = "deregistration"
        patient: Json = {"resourceType": "Patient", "id": change.local, "active": False}
    else:
        patient = down(change.patient)
        survivor = change.merged_into is not None
        code = "merge" if survivor else "demographics-change" if known else "registration"
    header = {
        "resourceType": "MessageHeader",
        "id": f"event-{change.local}-{int(change.stamp.timestamp() * 1e6)}",
        "event": {"system": EVENT_SYSTEM, "code": code},
        "timestamp": change.instant,
        "focus": [{"reference": f"Patient/{change.local}"}],
    }
    return {
        "resourceType": "Bundle",
        "id": header["id"],
        "meta": {"lastUpdated": change.instant},
        "type": "message",
        "entry": [{"resource": header}, {"resource": patient}],
    }


def build(
    store: FhirStore, behaviour: Behaviour, examples: dict[str, list[Json]] | None = None
) -> Starlette:
    """Wire the routes over ``store`` (or the published ``examples``)."""
    refusals: dict[str, str] = {}
    changes = PatientChanges()
    rendered = RenderedBundles()
    # a protocol check: made once, not per request
    shares: SharedStore | None = store if isinstance(store, SharedStore) else None

    def current(local: str) -> Json | None:
        return changes.patient(local, store.patient)

    def answer(asked: Asked) -> Answer:
        code = refusals.get(asked.nhs_number)
        if code is not None:
            return _refused(Refusal(SPINE_ERRORS[code].http, spine_outcome(code, code)))
        extra = [warning_outcome(asked.warnings)] if asked.warnings else []
        if examples is not None:
            entries = examples.get(asked.nhs_number)
            if entries is None:
                return _refused(Refusal(404, spine_outcome("PATIENT_NOT_FOUND", "not found")))
            bundle = {
                "resourceType": "Bundle",
                "meta": {"profile": [BUNDLE_PROFILE]},
                "type": "collection",
                "entry": entries + [{"resource": r} for r in extra],
            }
            body = orjson.dumps(bundle)
            return 200, body, FHIR_JSON, _stamped(etag_for(body))
        local = store.find(NHS_NUMBER_SYSTEM, asked.nhs_number)
        rec = store.record(local) if local else None
        if rec is None:
            return _refused(Refusal(404, spine_outcome("PATIENT_NOT_FOUND", "no such patient")))
        if "includeFullRecord" in asked.groups:
            types = None
        else:
            types = {t for g in asked.groups for t in GROUPS[g].r4_types}
        items = [rec[0]] + [r for r in rec[1:] if types is None or r["resourceType"] in types]
        shared = referenced(shares, items) if shares is not None else []
        asked_types = None if types is None else frozenset(types)
        body, tag = rendered.tagged((local, asked_types), items, shared, extra, etag_for)
        return 200, body, FHIR_JSON, _stamped(tag)

    async def operate(
        headers: Any, body: Callable[[], Awaitable[bytes | None]], interaction: str, reason: str
    ) -> Answer | None:
        """The operation's answer: the headers checked, then the body read (None: the
        client went away before sending it)."""
        checked = check_headers(headers, interaction, int(time.time()), reason)
        if isinstance(checked, Refusal):
            return _refused(checked)
        got = await body()
        if got is None:
            return None
        asked = check_parameters(got, _today(), full_record=reason == "migration")
        if isinstance(asked, Refusal):
            return _refused(asked)
        return answer(asked)

    def operation(interaction: str, reason: str) -> Any:
        """The operation as a Starlette endpoint (``raw_operation`` answers it first)."""

        async def handle(request: Request) -> Response:
            got = await operate(request.headers, request.body, interaction, reason)
            assert got is not None  # Starlette's body() raises when the client has gone
            status, body, media, headers = got
            out = Response(body, status_code=status, media_type=media)
            out.raw_headers[:0] = headers
            return out

        return handle

    def raw_operation(interaction: str, reason: str) -> RawHandler:
        """The operation as ``PostsFirst`` answers it: the same answer, sent raw."""

        async def handle(scope: Any, receive: Any, send: Any) -> None:
            got = await operate(
                HeaderMap(scope["headers"]), lambda: read_body(receive), interaction, reason
            )
            if got is not None:
                await send_answer(send, *got)

        return handle

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
            ids = changes.present(store.patient_ids())
        page = ids[offset : offset + count]
        # a Patient goes out as it is: serialising reads it, nothing changes it
        resources = [p if sent_as_is(p) else down(p) for i in page if (p := current(i))]
        return fhir_response(
            searchset(
                base, resources, len(ids), page_links(f"{base}/Patient", offset, count, len(ids))
            )
        )

    async def events(request: Request) -> Response:
        q = request.query_params
        since = q.get("_lastUpdated", "")
        try:
            count = int_param(q.get("_count"), 100, 1000)
            offset = int_param(q.get("_offset"), 0, 10**9)
            if not since.startswith("gt"):
                raise ValueError(since)
            listed = changes.since(since[2:])
        except ValueError:
            return bad_request("Bundle search takes _lastUpdated=gt<instant>, _count, _offset")
        base = str(request.base_url).rstrip("/")
        page = [
            event_message(c, store.patient(c.local) is not None)
            for c in listed[offset : offset + count]
        ]
        url = f"{base}/Bundle?_lastUpdated={quote(since, safe='')}"
        return fhir_response(
            searchset(base, page, len(listed), page_links(url, offset, count, len(listed)))
        )

    async def read(request: Request) -> Response:
        rtype, rid = request.path_params["type"], request.path_params["id"]
        # a Patient as the practice holds them now (changed, or gone), as its list shows
        found = current(rid) if rtype == "Patient" else store.resource(rtype, rid)
        if found is None:
            return _error(Refusal(404, spine_outcome("NO_RECORD_FOUND", "no such resource")))
        return fhir_response(down(found))

    async def by_identifier(request: Request) -> Response:
        return identifier_search(request, store, str(request.base_url).rstrip("/"))

    async def admin(request: Request) -> Response:
        if request.method == "POST":
            change = orjson.loads(await request.body())
            unknown = {c for c in change.get("refuse", {}).values() if c not in SPINE_ERRORS}
            if unknown:
                return Response(f"unknown codes {sorted(unknown)}".encode(), status_code=400)
            refusals.clear()
            refusals.update(change.get("refuse", {}))
        return Response(orjson.dumps({"refuse": refusals}), media_type="application/json")

    metadata = capability(
        "carelink GP Connect provider simulator",
        "3.0.1",
        ["Patient", "Practitioner", "Organization", "Location"],
        [
            {"name": name.lstrip("$"), "definition": {"reference": definition}}
            for name, definition in (
                (OPERATION, STRUCTURED_DEFINITION),
                (MIGRATE_OPERATION, MIGRATE_DEFINITION),
            )
        ],
    )
    routes = [
        Route("/metadata", unless_down(behaviour, metadata)),
        Route(
            f"/Patient/{OPERATION}",
            with_behaviour(behaviour, operation(INTERACTION_ID, "directcare")),
            methods=["POST"],
        ),
        Route(
            f"/Patient/{MIGRATE_OPERATION}",
            with_behaviour(behaviour, operation(MIGRATE_INTERACTION_ID, "migration")),
            methods=["POST"],
        ),
        Route("/Patient", with_behaviour(behaviour, patients)),
        Route("/Bundle", with_behaviour(behaviour, events)),
        Route("/_admin/gpconnect", admin, methods=["GET", "POST"]),
        *admin_routes(behaviour),
        *change_routes(changes),
        Route("/{type}/{id}", with_behaviour(behaviour, read)),
        Route("/{type}", with_behaviour(behaviour, by_identifier)),
    ]
    posts = {
        f"/Patient/{OPERATION}": raw_operation(INTERACTION_ID, "directcare"),
        f"/Patient/{MIGRATE_OPERATION}": raw_operation(MIGRATE_INTERACTION_ID, "migration"),
    }
    return Starlette(
        routes=routes, middleware=[Middleware(PostsFirst, behaviour=behaviour, posts=posts)]
    )
