"""The FHIR R4 REST interface: lookup, read, $everything, per-type search, PIXm."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.capability import capability_statement
from carelink.api.deps import audit, base_url, consent_for, context, router
from carelink.api.responses import fhir, http_date, not_modified
from carelink.audit.events import REFUSED
from carelink.auth import Principal
from carelink.consent import Filtered, Guard, Situation
from carelink.errors import AccessDenied, InvalidRequest, NotFound
from carelink.federation import SharedRecord
from carelink.federation.query import SEARCH_TYPES, criteria, in_period
from carelink.federation.record import source_outcome
from carelink.fhir import NHS_NUMBER_SYSTEM, dumps, problem, searchset
from carelink.fhir.nhs import normalise
from carelink.fhir.search import apply_elements, fold, parse_date, parse_token, target_range
from carelink.sources.base import LOCAL_ID_SYSTEM

Json = dict[str, Any]

PATIENT_PARAMS = {"identifier", "family", "given", "birthdate", "_id"}
EVERYTHING_PARAMS = {"start", "end", "_since", "_type", "_count", "_offset", "_format"}

route = router.fhir_get


@route("/metadata")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement (no token needed, as SMART requires)."""
    P.check_format(request)
    state = request.app.state
    token_url = state.token_url if state.token_service is not None else None
    profiles = state.profiles.by_type()
    return fhir(
        capability_statement(await base_url(request), state.settings.auth, token_url, profiles)
    )


def _page(
    base: str,
    url: str,
    matches: list[Json],
    q: dict[str, list[str]],
    used: set[str],
    request: Request,
    *,
    includes: list[Json] | None = None,
    outcomes: list[Json] | None = None,
) -> Json:
    settings = request.app.state.settings
    paging = P.paging(q, used, settings.default_page_size, settings.max_page_size)
    total = len(matches)
    links = paging.links(url, total)
    if P.summary_count(q):
        return searchset(base, [], total=total, links={"self": links["self"]})
    page = matches[paging.offset : paging.offset + paging.count]
    wanted = P.elements(q)
    if wanted is not None:
        page = [apply_elements(r, wanted) for r in page]
    return searchset(
        base,
        page,
        total=total,
        links=links,
        includes=(includes or []) if paging.offset == 0 else [],
        outcomes=outcomes or [],
    )


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


@route("/Patient/{pid}/$everything")
async def everything(request: Request) -> Response:
    """The whole shared record: every source at once, merged, paged stably."""
    record, caller, base = await context(request)
    pid = request.path_params["pid"]
    P.check_format(request)
    q = P.multi(request)
    pref = P.prefer(request)
    P.unknown([k for k in q if k not in EVERYTHING_PARAMS | P.RESULT_PARAMS], pref.strict)
    types = frozenset(t.strip() for v in q.get("_type", []) for t in v.split(",") if t.strip())
    start = parse_date(q["start"][-1], "start").range if "start" in q else None
    end = parse_date(q["end"][-1], "end").range if "end" in q else None
    since = parse_date(q["_since"][-1], "_since").range.start if "_since" in q else None
    access.require(caller, "Patient", "r")
    access.in_compartment(caller, pid)
    situation = await _consented_person(request, caller, record, pid)
    fed = await record.federate(pid, types | {"Patient"} if types else None, pref.wait)
    shown = request.app.state.guard.filter(situation, access.visible(caller, fed.resources))
    request.state.break_glass = shown.break_glass
    matches = shown.resources
    if types or start or end or since:
        matches = [
            r
            for r in matches
            if (not types or r["resourceType"] in types)
            and in_period(r, start, end)
            and _since_ok(r, since)
        ]
    etag = f'"{fed.etag}-{_query_digest(q, caller, situation)}"'
    await audit(request, "operation", [pid])
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    used = {"start", "end", "_since", "_type"} & set(q)
    body = _page(
        base,
        f"{base}/Patient/{pid}/$everything",
        matches,
        q,
        used,
        request,
        includes=access.provenance_for(caller, fed.provenance, matches),
        outcomes=[_outcome(fed, shown)],
    )
    headers = {"ETag": etag}
    newest = max((r.as_of for r in fed.results if r.as_of), default=None)
    if (modified := http_date(newest)) is not None:
        headers["Last-Modified"] = modified
    return fhir(body, headers=headers)


def _since_ok(resource: Json, since: Any) -> bool:
    if since is None:
        return True
    updated = resource.get("meta", {}).get("lastUpdated")
    rng = target_range(updated) if updated else None
    return rng is None or rng.start >= since


def _query_digest(q: dict[str, list[str]], caller: Principal, situation: Situation) -> str:
    """What else shapes the representation: the query, what the caller may see, consent."""
    shape = [
        sorted(q.items()),
        sorted(caller.scopes),
        caller.patient,
        caller.organisation,
        caller.role,
        caller.purpose,
        [(d.id, d.status) for d in situation.directives],
    ]
    return hashlib.blake2b(orjson.dumps(shape, default=str), digest_size=8).hexdigest()


async def _consented_person(
    request: Request, caller: Principal, record: SharedRecord, pid: str
) -> Situation:
    """The consent situation, refusing (as not found) a person withheld from this caller."""
    person = record.person(pid)
    if person is None:
        raise NotFound(f"Patient/{pid} is not known")
    patient = orjson.loads(person.patient)
    situation: Situation = consent_for(request, caller, pid, patient)
    if not request.app.state.guard.filter(situation, [patient]).resources:
        await audit(request, "operation", [pid], REFUSED, "withheld by consent")
        raise NotFound(f"Patient/{pid} is not known")
    return situation


def _outcome(fed: Any, shown: Filtered) -> Json:
    """The per-source outcome, naming only sources the caller saw data from when consent
    withheld anything (so the answer does not show where else the person has records)."""
    if not shown.withheld:
        return dict(fed.outcome)
    return source_outcome([r for r in fed.results if r.source in shown.sources_seen])


@route("/{rtype}")
async def search_type(request: Request) -> Response:
    """Per-type search within one patient's federated record."""
    record, caller, base = await context(request)
    rtype = request.path_params["rtype"]
    P.check_format(request)
    if rtype not in SEARCH_TYPES:
        raise NotFound(f"Resource type '{rtype}' is not supported")
    q = P.multi(request)
    pref = P.prefer(request)
    patient = q.get("patient", q.get("subject", [None]))[-1]
    if not patient:
        raise InvalidRequest(f"{rtype} search needs the patient parameter", "patient")
    pid = patient.removeprefix("Patient/")
    rest = {
        k: v
        for k, v in q.items()
        if k not in P.RESULT_PARAMS | {"patient", "subject", "_revinclude"}
    }
    crit, unknown_names = criteria(rtype, rest)
    P.unknown(unknown_names, pref.strict)
    revinclude = "Provenance:target" in q.get("_revinclude", [])
    access.require(caller, rtype, "s")
    access.in_compartment(caller, pid)
    situation = await _consented_person(request, caller, record, pid)
    fed = await record.federate(pid, frozenset({rtype, "Patient"}), pref.wait)
    shown = request.app.state.guard.filter(
        situation,
        access.visible(
            caller,
            (
                r
                for r in fed.resources
                if r["resourceType"] == rtype and all(c.matches(r) for c in crit)
            ),
            "s",
        ),
    )
    request.state.break_glass = shown.break_glass
    matches = shown.resources
    used = {"patient", "subject", "_revinclude"} & set(q) | {c.name for c in crit}
    includes = access.provenance_for(caller, fed.provenance, matches) if revinclude else []
    await audit(request, "search-type", [pid])
    return fhir(
        _page(
            base,
            f"{base}/{rtype}",
            matches,
            q,
            used,
            request,
            includes=includes,
            outcomes=[_outcome(fed, shown)],
        )
    )
