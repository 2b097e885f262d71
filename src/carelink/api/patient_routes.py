"""Patient search, read and IHE PIXm: finding people in the index."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.deps import audit, consent_for, context, router
from carelink.api.fhir_routes import _page
from carelink.api.responses import fhir, http_date, not_modified
from carelink.audit.events import REFUSED
from carelink.consent import Guard
from carelink.errors import AccessDenied, InvalidRequest, NotFound
from carelink.federation import SharedRecord
from carelink.fhir import NHS_NUMBER_SYSTEM, dumps, problem
from carelink.fhir.nhs import normalise
from carelink.fhir.search import fold, parse_date, parse_token, target_range
from carelink.sources.base import LOCAL_ID_SYSTEM

Json = dict[str, Any]

PATIENT_PARAMS = {"identifier", "family", "given", "birthdate", "_id"}

route = router.fhir_get


@route("/Patient")
async def search_patient(request: Request) -> Response:
    """Find people in the index by NHS number, local id, name, birth date or id."""
    record, caller, base = await context(request)
    P.check_format(request)
    q = P.multi(request)
    pref = P.prefer(request)
    P.unknown([k for k in q if k not in PATIENT_PARAMS | P.RESULT_PARAMS], pref.strict)
    access.require(caller, "Patient", "s")
    rows = [
        r for r in _find_patients(record, q) if caller.patient is None or r.id == caller.patient
    ]
    guard: Guard = request.app.state.guard
    matches = []
    for found in access.visible(caller, (orjson.loads(r.patient) for r in rows), "s"):
        situation = consent_for(request, caller, str(found["id"]), found)
        matches.extend(guard.filter(situation, [found]).resources)
    used = {k for k in q if k in PATIENT_PARAMS}
    await audit(request, "search-type", [str(m["id"]) for m in matches])
    return fhir(_page(base, f"{base}/Patient", matches, q, used, request))


def _find_patients(record: SharedRecord, q: dict[str, list[str]]) -> list[Any]:
    if "identifier" in q:
        results = None
        for value in q["identifier"]:
            token = parse_token(value, "identifier")
            hits = _by_identifier(record, token.system, token.code)
            results = hits if results is None else [r for r in results if r in hits]
        rows = results or []
    elif "_id" in q:
        rows = [r for v in q["_id"] for i in v.split(",") if (r := record.person(i))]
    elif any(k in q for k in ("family", "given", "birthdate")):
        rows = _by_demographics(record, q)
    else:
        raise InvalidRequest(
            "Patient search needs identifier, _id, family, given or birthdate "
            "(the gateway does not list everyone)"
        )
    return rows


def _by_identifier(record: SharedRecord, system: str | None, value: str | None) -> list[Any]:
    if value is None:
        raise InvalidRequest("identifier needs a value", "identifier")
    if system in (None, NHS_NUMBER_SYSTEM):
        why = problem(value)
        if why is not None and system == NHS_NUMBER_SYSTEM:
            raise InvalidRequest(f"identifier: invalid NHS number: {why}", "identifier")
        if why is None:
            row = record.by_nhs_number(normalise(value))
            return [row] if row else []
        if system is not None:
            return []
    for name in record.fanout.sources:
        if system in (None, LOCAL_ID_SYSTEM.format(name=name)):
            link = record.index.link(name, value)
            if link is not None:
                person = record.person(link.person_id)
                return [person] if person else []
    return []


def _by_demographics(record: SharedRecord, q: dict[str, list[str]]) -> list[Any]:
    family = fold(q["family"][-1]) if "family" in q else None
    given = fold(q["given"][-1]) if "given" in q else None
    rows = record.index.search(family=family, given=given, birth_dates=None)
    for value in q.get("birthdate", []):
        query = parse_date(value, "birthdate")
        rows = [
            r
            for r in rows
            if r.birth_date and (t := target_range(r.birth_date)) is not None and query.matches(t)
        ]
    return rows


@route("/Patient/$ihe-pix")
async def pix(request: Request) -> Response:
    """IHE PIXm: any source's local id (or the NHS number) to every identifier of the person."""
    record, caller, _ = await context(request)
    P.check_format(request)
    q = P.multi(request)
    if "sourceIdentifier" not in q:
        raise InvalidRequest("sourceIdentifier (system|value) is required", "sourceIdentifier")
    token = parse_token(q["sourceIdentifier"][-1], "sourceIdentifier")
    if not token.system or not token.code:
        raise InvalidRequest("sourceIdentifier must be system|value", "sourceIdentifier")
    access.require(caller, "Patient", "s")
    rows = _by_identifier(record, token.system, token.code)
    if not rows:
        raise NotFound("sourceIdentifier is not known to the index")
    person = rows[0]
    access.in_compartment(caller, person.id)
    guard: Guard = request.app.state.guard
    patient = orjson.loads(person.patient)
    situation = consent_for(request, caller, person.id, patient)
    if not guard.filter(situation, [patient]).resources:
        await audit(request, "operation", [person.id], REFUSED, "withheld by consent")
        raise NotFound("sourceIdentifier is not known to the index")
    hidden = guard.hidden_sources(situation)
    targets = set(q.get("targetSystem", []))
    wanted = (
        [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}] if person.nhs_number else []
    )
    for link in record.index.links_of(person.id):
        if link.source in hidden:
            continue
        wanted.append({"system": LOCAL_ID_SYSTEM.format(name=link.source), "value": link.local_id})
    parameters: list[Json] = [
        {"name": "targetIdentifier", "valueIdentifier": ident}
        for ident in wanted
        if (not targets or ident["system"] in targets)
        and not (ident["system"] == token.system and ident["value"] == token.code)
    ]
    parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{person.id}"}})
    await audit(request, "operation", [person.id])
    return fhir({"resourceType": "Parameters", "parameter": parameters})


@route("/Patient/{pid}")
async def read_patient(request: Request) -> Response:
    """The merged Patient, or a source's own Patient (``<source>-<local id>``)."""
    record, caller, _ = await context(request)
    pid = request.path_params["pid"]
    P.check_format(request)
    access.require(caller, "Patient", "r")
    row = record.person(pid)
    if row is not None:
        person_id, body, version = row.id, row.patient, row.version
    else:
        link = record.source_patient(pid)
        if link is None:
            raise NotFound(f"Patient/{pid} is not known")
        person_id, body = link.person_id, link.patient
        version = f"{link.person_id}-{link.source}"
    access.in_compartment(caller, person_id)
    resource = orjson.loads(body)
    if not access.visible(caller, [resource]):
        raise AccessDenied("no scope allows read of this Patient")
    guard: Guard = request.app.state.guard
    if row is not None:
        merged: Json | None = resource  # the index's Patient, parsed once above
    else:
        person = record.person(person_id)
        merged = orjson.loads(person.patient) if person else None
    situation = consent_for(request, caller, person_id, merged)
    shown = guard.filter(situation, [resource])
    if not shown.resources:
        await audit(request, "read", [person_id], REFUSED, "withheld by consent")
        raise NotFound(f"Patient/{pid} is not known")
    request.state.break_glass = shown.break_glass
    body = dumps(shown.resources[0]) if shown.resources[0] is not resource else body
    await audit(request, "read", [person_id])
    etag = f'W/"{version}"'
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"ETag": etag}
    modified = http_date(shown.resources[0].get("meta", {}).get("lastUpdated"))
    if modified:
        headers["Last-Modified"] = modified
    return fhir(body, headers=headers)
