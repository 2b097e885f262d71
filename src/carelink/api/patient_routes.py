"""Patient search, read and IHE PIXm: finding people in the index."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.deps import actor, audit, consent_for, context, header, looked_up, router
from carelink.api.responses import Answer, fhir, http_date, not_modified
from carelink.audit.events import REFUSED
from carelink.auth import Principal
from carelink.consent import Actor, Filtered, Guard
from carelink.errors import AccessDenied, InvalidRequest, NotFound
from carelink.federation import SharedRecord
from carelink.federation.patient_search import (
    Consents,
    find_people,
    identifier_tests,
    patient_params,
    patient_query,
)
from carelink.federation.read import retired_patient
from carelink.fhir import NHS_NUMBER_SYSTEM, dumps, searchset
from carelink.fhir.nhs import problem
from carelink.fhir.search import apply_elements, parse_token
from carelink.sources.base import LOCAL_ID_SYSTEM, local_id_system
from carelink.storage import FoundPerson, LinkRow, PersonQuery, PersonRow
from carelink.storage.database import HOT_LIMIT

Json = dict[str, Any]

route = router.fhir_get


#: The lookup's query string exactly: one ``identifier`` of the NHS number system, as sent
#: or percent-encoded, and nothing else (``lookup_number``).
_LOOKUP = re.compile(
    rb"identifier=https(?::|%3[aA])(?:/|%2[fF])(?:/|%2[fF])fhir\.nhs\.uk(?:/|%2[fF])Id"
    rb"(?:/|%2[fF])nhs-number(?:\||%7[cC])([0-9]{10})"
)


def lookup_number(query_string: bytes) -> str | None:
    """The NHS number when a Patient search's query is the lookup
    (``identifier=https://fhir.nhs.uk/Id/nhs-number|<10 digits>`` alone), else None."""
    found = _LOOKUP.fullmatch(query_string)
    return found.group(1).decode() if found is not None else None


@route("/Patient")
async def search_patient(request: Request) -> Response:
    """Find people in the index: exact (identifier, _id) or demographic (at least family and
    birthdate), every match in SQL, paged, counting only whom consent lets the caller see.

    The lookup by NHS number alone, the clinician's hot path, is answered by ``lookup``:
    the same answer, refusals and audit as the general search gives it."""
    nhs = lookup_number(request.scope["query_string"])
    if nhs is not None:
        return await lookup(request, nhs)
    record, caller, base = await context(request)
    P.check_format(request)
    q = P.multi(request)
    pref = P.prefer(request)
    params, others = patient_params(q)
    P.unknown([k for k in others if k not in P.RESULT_PARAMS], pref.strict)
    access.require(caller, "Patient", "s")
    guard: Guard = request.app.state.guard
    who = actor(caller)
    # before the search, so a refused purpose is refused whether anyone matches or not
    guard.require_purpose(who)
    query = _find_patients(record, params, datetime.fromtimestamp(guard.clock(), UTC))
    if caller.patient is not None:  # a patient's token: their own compartment only
        query = replace(query, ids=(*query.ids, (caller.patient,)))
    settings = request.app.state.settings
    paging = P.paging(q, params, settings.default_page_size, settings.max_page_size)
    counting = P.summary_count(q)

    break_glass: set[str] = set()

    def shown(rows: Sequence[FoundPerson], held: Consents) -> list[Shown | None]:
        return _shown_batch(record, caller, who, guard, rows, break_glass, held)

    found = await looked_up(
        request,
        find_people,
        record.index,
        query,
        shown,
        paging.offset,
        0 if counting else paging.count,
        # a demographic search may take longer than the lookup's one indexed read
        limit=HOT_LIMIT if record.index.is_lookup(query) else None,
    )
    # one event per person actually returned on this page (a count returns nobody)
    served = [pid for _, _, pid in found.page]
    await audit(request, "search-type", served, break_glass_ids=break_glass)
    links = paging.links(f"{base}/Patient", found.total)
    # ``Answer``: what ``fhir`` answers, byte for byte, without a Response's own making
    if counting:
        bundle = searchset(base, [], total=found.total, links={"self": links["self"]})
        return Answer(dumps(bundle), {})
    wanted = P.elements(q)
    if wanted is not None:
        page = [apply_elements(_parsed(r, raw), wanted) for r, raw, _ in found.page]
        return Answer(dumps(searchset(base, page, total=found.total, links=links)), {})
    matches, encode = _as_stored(found.page)
    return Answer(
        dumps(searchset(base, matches, total=found.total, links=links, encode=encode)), {}
    )


#: a Patient a search shows: the object (None when it was never parsed: a plain person
#: shown as stored), its stored JSON when it is shown exactly as stored, and its id
Shown = tuple[Json | None, bytes | None, str]


def _parsed(resource: Json | None, raw: bytes | None) -> Json:
    """The Patient a search shows, parsed from its stored JSON if it was not."""
    if resource is not None:
        return resource
    assert raw is not None  # what ``_shown_batch`` makes
    parsed: Json = orjson.loads(raw)
    return parsed


def _as_stored(page: Sequence[Shown]) -> tuple[list[Json], Callable[[Json], Any]]:
    """The matches of a page's searchset and its ``encode``: a Patient shown as stored
    goes out as its stored bytes, not parsed (a plain person's) nor written again; one
    never parsed stands in the matches as its type and id, all its entry's ``fullUrl``
    is made of (the page holds each match, so no other object takes its id meanwhile)."""
    matches: list[Json] = []
    stored: dict[int, bytes] = {}
    for r, raw, pid in page:
        match = r if r is not None else {"resourceType": "Patient", "id": pid}
        matches.append(match)
        if raw is not None:
            stored[id(match)] = raw

    def encode(r: Json) -> Json | orjson.Fragment:
        raw = stored.get(id(r))
        return r if raw is None else orjson.Fragment(raw)

    return matches, encode


def _shown_batch(
    record: SharedRecord,
    caller: Principal,
    who: Actor,
    guard: Guard,
    rows: Sequence[PersonRow | FoundPerson],
    break_glass: set[str],
    held: Consents,
) -> list[Shown | None]:
    """What a search may show the caller of each of a batch of its matches (None: scopes
    or consent withhold the person): ``held``, the batch's active consents as read with
    the rows, by person id (a person it leaves out has none), and the caller's consent
    identity made once. A break-glass disclosure adds the person's id to
    ``break_glass``.

    A plain person (``PersonRow.plain``: an unmarked Patient of their id) who holds no
    Consents is shown as stored, never parsed, when the caller's scopes pass every
    Patient and consent shows every unmarked resource to the caller as it is
    (``Engine.shows_unmarked``): what ``visible`` and ``Guard.filter_people`` give such a
    person, the Patient itself (``tests/api/test_patient_plain.py``). The others are
    parsed and decided about as ever."""
    as_stored = guard.engine.shows_unmarked(who) and access.passes_every(caller, "Patient", "s")
    asked = [r for r in rows if not (r.plain and not held.get(r.id))] if as_stored else rows
    patients = [record.index_patient(r) for r in asked]
    scoped = {id(p) for p in access.visible(caller, patients, "s")}
    people = [(r.id, p) for r, p in zip(asked, patients, strict=True) if id(p) in scoped]
    decided = iter(guard.filter_people(who, people, held, record.shares_patients))
    parsed = iter(patients)
    out: list[Shown | None] = []
    for row in rows:
        if as_stored and row.plain and not held.get(row.id):
            out.append((None, row.patient, row.id))
            continue
        patient = next(parsed)
        filtered = next(decided) if id(patient) in scoped else None
        if filtered is not None and filtered.break_glass:
            break_glass.add(row.id)
        if filtered is None or not filtered.resources:
            out.append(None)
            continue
        served = filtered.resources[0]
        out.append((served, row.patient if served is patient else None, str(served["id"])))
    return out


async def lookup(request: Request, nhs: str) -> Response:
    """``GET /Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|<nhs>``: the person with
    this NHS number, if consent and the token let the caller see them, as a searchset.

    What the general search does for this query, in the same order and with the same
    errors, without what only other queries need: the query is known to be one valid
    NHS number and nothing else, so it is one indexed read, no paging beyond the first
    page, and the links are written directly. ``tests/api/test_lookup_path.py`` holds
    the two to the same answers and audit events."""
    record, caller, base = await context(request)
    accept = header(request, b"accept")
    if accept:
        P.check_accept(accept)
    if header(request, b"prefer") is not None:
        P.prefer(request)  # its errors only: nothing it says changes the lookup's answer
    access.require(caller, "Patient", "s")
    guard: Guard = request.app.state.guard
    who = actor(caller)
    guard.require_purpose(who)
    why = problem(nhs)
    if why is not None:
        raise InvalidRequest(f"identifier: invalid NHS number: {why}", "identifier")
    count = P.page_size(request.app.state.settings.default_page_size)
    break_glass: set[str] = set()

    def find() -> Shown | None:
        found = record.index.person_by_nhs_with_consents(nhs)
        if found is None or (caller.patient is not None and found[0].id != caller.patient):
            return None
        row, consents = found
        return _shown_batch(record, caller, who, guard, [row], break_glass, {row.id: consents})[0]

    shown = await looked_up(request, find)
    page = [] if shown is None or count == 0 else [shown]
    await audit(request, "search-type", [pid for _, _, pid in page], break_glass_ids=break_glass)
    links = P.lookup_links(f"{base}/Patient", nhs, count, 0 if shown is None else 1)
    total = 0 if shown is None else 1
    matches, encode = _as_stored(page)
    return Answer(
        dumps(searchset(base, matches, total=total, links=links, encode=encode)),
        {},
    )


def _find_patients(
    record: SharedRecord, params: dict[str, list[str]], now: datetime
) -> PersonQuery:
    """The index criteria for the request's Patient search parameters (400s on bad ones)."""
    return patient_query(params, record.fanout.sources, now)


def _by_identifier(record: SharedRecord, value: str, parameter: str) -> list[PersonRow]:
    """The person (at most one) an identifier token names."""
    systems = {local_id_system(s): s for s in record.fanout.sources}
    tests = identifier_tests(value, systems, parameter)
    return record.index.find(PersonQuery(identifiers=(tests,)), limit=1)


@router.fhir_route("/Patient/$ihe-pix", ["GET", "POST"])
async def pix(request: Request) -> Response:
    """IHE PIXm: any source's local id (or the NHS number) to every identifier of the person.
    By POST, the parameters may come in a ``Parameters`` body (``sourceIdentifier`` as a
    ``valueIdentifier``) or a form, as FHIR operations allow."""
    record, caller, _ = await context(request)
    P.check_format(request)
    q = P.multi(request)
    if request.method == "POST":
        for k, v in (await P.body_params(request)).items():
            q.setdefault(k, []).extend(v)
    if "sourceIdentifier" not in q:
        raise InvalidRequest("sourceIdentifier (system|value) is required", "sourceIdentifier")
    token = parse_token(q["sourceIdentifier"][-1], "sourceIdentifier")
    if not token.system or not token.code:
        raise InvalidRequest("sourceIdentifier must be system|value", "sourceIdentifier")
    access.require(caller, "Patient", "s")
    rows = await looked_up(
        request, _by_identifier, record, q["sourceIdentifier"][-1], "sourceIdentifier"
    )
    if not rows:
        raise NotFound("sourceIdentifier is not known to the index")
    person = rows[0]
    if not access.reaches(caller, person.id):  # another patient's: as if unknown
        await audit(request, "operation", [person.id], REFUSED, "outside the token's patient")
        raise NotFound("sourceIdentifier is not known to the index")
    guard: Guard = request.app.state.guard
    patient = orjson.loads(person.patient)

    def consented() -> tuple[Filtered, frozenset[str], list[LinkRow]]:
        situation = consent_for(request, caller, person.id, patient)
        filtered = guard.filter(situation, [patient])
        if not filtered.resources:
            return filtered, frozenset(), []
        return filtered, guard.hidden_sources(situation), record.index.links_of(person.id)

    filtered, hidden, person_links = await looked_up(request, consented)
    if not filtered.resources:
        await audit(request, "operation", [person.id], REFUSED, "withheld by consent")
        raise NotFound("sourceIdentifier is not known to the index")
    request.state.break_glass = filtered.break_glass
    targets = set(q.get("targetSystem", []))
    wanted = (
        [{"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}] if person.nhs_number else []
    )
    for link in person_links:
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


def _patient_or_copy(
    record: SharedRecord, pid: str
) -> tuple[PersonRow | None, LinkRow | None, Json | None]:
    """The index's person with this id, or else the source Patient copy with this id, or
    else the retired person id's Patient pointing on to its successors."""
    row = record.person(pid)
    if row is not None:
        return row, None, None
    link = record.source_patient(pid)
    return None, link, None if link is not None else retired_patient(record.index, pid)


async def _retired(request: Request, caller: Principal, pid: str, retired: Json) -> Response:
    """A retired id read: the ids of the successors the caller reaches (a patient token
    reaches its own only), or unknown when it reaches none of them."""
    links = [
        lk
        for lk in retired["link"]
        if access.reaches(caller, lk["other"]["reference"].removeprefix("Patient/"))
    ]
    if not links:
        raise NotFound(f"Patient/{pid} is not known")
    shown = [lk["other"]["reference"].removeprefix("Patient/") for lk in links]
    await audit(request, "read", shown)
    return fhir(dumps({**retired, "link": links}))


@route("/Patient/{pid}")
async def read_patient(request: Request) -> Response:
    """The merged Patient, or a source's own Patient (``<source>-<local id>``)."""
    record, caller, _ = await context(request)
    pid = request.path_params["pid"]
    P.check_format(request)
    access.require(caller, "Patient", "r")
    row, link, retired = await looked_up(request, _patient_or_copy, record, pid)
    if row is not None:
        person_id, body = row.id, row.patient
    else:
        if retired is not None:
            return await _retired(request, caller, pid, retired)
        if link is None:
            raise NotFound(f"Patient/{pid} is not known")
        person_id, body = link.person_id, link.patient
    if not access.reaches(caller, person_id):  # another patient's: as if unknown
        await audit(request, "read", [person_id], REFUSED, "outside the token's patient")
        raise NotFound(f"Patient/{pid} is not known")
    resource = orjson.loads(body)
    if not access.visible(caller, [resource]):
        raise AccessDenied("no scope allows read of this Patient")
    guard: Guard = request.app.state.guard

    def consented() -> tuple[Json | None, Filtered]:
        if row is not None:
            merged: Json | None = resource  # the index's Patient, parsed once above
        else:
            person = record.person(person_id)
            merged = orjson.loads(person.patient) if person else None
        situation = consent_for(request, caller, person_id, merged)
        return merged, guard.filter(situation, [resource])

    merged, shown = await looked_up(request, consented)
    if not shown.resources:
        await audit(request, "read", [person_id], REFUSED, "withheld by consent")
        raise NotFound(f"Patient/{pid} is not known")
    request.state.break_glass = shown.break_glass
    served = shown.resources[0]
    body = dumps(served) if served is not resource else body
    await audit(request, "read", [person_id])
    # content-versioned: the hash of the bytes served (what consent left, for this caller)
    headers = {"ETag": f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'}
    # a source Patient copy without meta.lastUpdated is as new as the index build that made it
    updated = served.get("meta", {}).get("lastUpdated") or (merged or {}).get("meta", {}).get(
        "lastUpdated"
    )
    modified = http_date(updated)
    if modified:
        headers["Last-Modified"] = modified
    if not_modified(request, headers["ETag"], modified):
        return Response(status_code=304, headers=headers)
    return fhir(body, headers=headers)
