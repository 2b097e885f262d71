"""The FHIR R4 REST interface: metadata, $everything, per-type search.

Patient search, read and PIXm live in ``patient_routes``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from carelink.api import access, paging
from carelink.api import params as P
from carelink.api.capability import capability_statement
from carelink.api.deps import (
    base_url,
    consented_person,
    consented_record,
    context,
    looked_up,
    router,
)
from carelink.api.responses import fhir
from carelink.consent import Guard
from carelink.errors import InvalidRequest, NotFound
from carelink.federation import SharedRecord
from carelink.federation.query import SEARCH_TYPES, criteria, in_period
from carelink.federation.record import Federated
from carelink.fhir.search import parse_date, target_range
from carelink.sources.base import source_uri
from carelink.sources.gpconnect_request import Period, asking_for, current_period

Json = dict[str, Any]

EVERYTHING_PARAMS = {"start", "end", "_since", "_type", "_count", "_offset", "_format"}

route = router.fhir_get


@route("/metadata")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement (no token needed, as SMART requires)."""
    P.check_format(request)
    state = request.app.state
    token_url = state.token_url if state.token_service is not None else None
    profiles = state.profiles.by_type()
    return fhir(capability_statement(base_url(request), state.settings.auth, token_url, profiles))


@router.fhir_route("/Patient/{pid}/$everything", ["GET", "POST"])
async def everything(request: Request) -> Response:
    """The whole shared record: every source at once, merged, paged over one stored result.
    By POST, parameters may also come in a ``Parameters`` body (or a form)."""
    q = await _with_body(request) if request.method == "POST" else P.multi(request)
    return await _everything(request, q)


async def _everything(request: Request, q: dict[str, list[str]]) -> Response:
    record, caller, base = await context(request)
    pid = request.path_params["pid"]
    P.check_format(request)
    pref = P.prefer(request)
    P.unknown([k for k in q if k not in EVERYTHING_PARAMS | PAGED_PARAMS], pref.strict)
    types = _types(q)
    start = parse_date(q["start"][-1], "start").range if "start" in q else None
    end = parse_date(q["end"][-1], "end").range if "end" in q else None
    since = parse_date(q["_since"][-1], "_since").range.start if "_since" in q else None
    access.require(caller, "Patient", "r")
    access.in_compartment(caller, pid)
    situation, person, links = await consented_record(
        request, caller, pid, "operation", f"Patient/{pid} is not known", "_cursor" not in q
    )
    key = f"Patient/{pid}/$everything"
    used = {"start", "end", "_since", "_type"} & set(q)
    asked = paging.Asked(caller, situation, key, base, f"{base}/{key}", q, used, "operation")
    if "_cursor" in q:
        return await paging.stored_page(request, asked)
    # GP Connect is asked for the period too (its search periods); everything is still
    # filtered here, for every source alike
    period = (
        Period(
            start.start.date() if start else None,
            (end.end - timedelta(microseconds=1)).date() if end else None,
        )
        if start or end
        else None
    )
    call = record.federate(pid, types | {"Patient"} if types else None, pref.wait, person, links)
    if period is None and current_period() is None:  # no period to say, none to hide
        fed = await call
    else:
        with asking_for(period):
            fed = await call
    guard: Guard = request.app.state.guard
    # may read the caller's break-glass grant: off the loop on PostgreSQL
    shown = await looked_up(
        request,
        guard.filter,
        situation,
        access.visible(caller, fed.resources),
        True,  # the record's resources, shared while its sources answer the same
        limit=None,
    )
    request.state.break_glass = shown.break_glass
    matches = shown.resources
    if types or start or end or since:
        learned = await looked_up(request, _learned, record, pid, fed) if since is not None else {}
        matches = [
            r
            for r in matches
            if (not types or r["resourceType"] in types)
            and in_period(r, start, end)
            and _since_ok(r, since, learned)
        ]
    ready = paging.shown(request, asked, fed, shown, matches)
    return await paging.first_page(request, asked, ready, fed.encodings)


async def _with_body(request: Request) -> dict[str, list[str]]:
    """The query's parameters and those of the POST body, together."""
    q = P.multi(request)
    for k, v in (await P.body_params(request)).items():
        q.setdefault(k, []).extend(v)
    return q


#: result parameters, and the cursor of a stored result
PAGED_PARAMS = P.RESULT_PARAMS | {"_cursor"}
#: what ``$everything``'s ``_type`` may name: the types the gateway serves
EVERYTHING_TYPES = frozenset(SEARCH_TYPES) | {"Patient"}


def _types(q: dict[str, list[str]]) -> frozenset[str]:
    types = frozenset(t.strip() for v in q.get("_type", []) for t in v.split(",") if t.strip())
    wrong = sorted(types - EVERYTHING_TYPES)
    if wrong:
        raise InvalidRequest(
            f"_type names {', '.join(wrong)}, which the gateway does not serve "
            f"(it serves {', '.join(sorted(EVERYTHING_TYPES))})",
            "_type",
        )
    return types


def _learned(record: SharedRecord, pid: str, fed: Federated) -> dict[str, str]:
    """When the gateway learned of each resource: ``Type/id`` -> the first time it saw it
    (``resource_locations``), else the source answer's ``as_of`` by ``meta.source``."""
    out = {source_uri(r.source): r.as_of for r in fed.results if r.as_of}
    if record.locations is not None:
        out.update(record.locations.first_seen_of(pid))
    return out


def _since_ok(resource: Json, since: Any, learned: dict[str, str] | None = None) -> bool:
    """``_since``: changed at or after ``since``. A resource without ``meta.lastUpdated`` is
    judged on when the gateway first learned of it (``resource_locations``), else on its
    source answer's ``as_of``; one with none of these is left out, as nothing says it
    changed."""
    if since is None:
        return True
    meta = resource.get("meta", {})
    known = learned or {}
    updated = (
        meta.get("lastUpdated")
        or known.get(f"{resource.get('resourceType')}/{resource.get('id')}")
        or known.get(meta.get("source", ""))
    )
    rng = target_range(updated) if updated else None
    return rng is not None and rng.start >= since


def _patient_param(q: dict[str, list[str]], base: str) -> str:
    """The patient's id from ``patient``/``subject``: ``X``, ``Patient/X`` or this gateway's
    absolute ``<base>/Patient/X``; a reference to another server is refused."""
    value = q.get("patient", q.get("subject", [None]))[-1]
    name = "patient" if "patient" in q else "subject"
    if not value:
        raise InvalidRequest("the search needs the patient parameter", "patient")
    if "://" in value:
        local = value.removeprefix(base.rstrip("/") + "/")
        if local == value or not local.startswith("Patient/"):
            raise InvalidRequest(
                f"{name} refers to another server; this gateway answers for {base}", name
            )
        value = local
    pid = value.removeprefix("Patient/")
    if not pid or "/" in pid:
        raise InvalidRequest(f"{name} must be a Patient id or reference", name)
    return pid


@route("/{rtype}")
async def search_type(request: Request) -> Response:
    """Per-type search within one patient's federated record."""
    return await _search_type(request, P.multi(request))


@router.fhir_route("/{rtype}/_search", ["POST"])
async def search_type_post(request: Request) -> Response:
    """Per-type search by POST: parameters in the query or a form-encoded body."""
    return await _search_type(request, await _with_body(request))


async def _search_type(request: Request, q: dict[str, list[str]]) -> Response:
    record, caller, base = await context(request)
    rtype = request.path_params["rtype"]
    P.check_format(request)
    if rtype not in SEARCH_TYPES:
        raise NotFound(f"Resource type '{rtype}' is not supported")
    pref = P.prefer(request)
    if not q.get("patient", q.get("subject", [None]))[-1]:
        raise InvalidRequest(f"{rtype} search needs the patient parameter", "patient")
    pid = _patient_param(q, base)
    rest = {
        k: v for k, v in q.items() if k not in PAGED_PARAMS | {"patient", "subject", "_revinclude"}
    }
    crit, unknown_names = criteria(rtype, rest)
    P.unknown(unknown_names, pref.strict)
    revinclude = "Provenance:target" in q.get("_revinclude", [])
    access.require(caller, rtype, "s")
    access.in_compartment(caller, pid)
    situation, person = await consented_person(
        request, caller, pid, "search-type", f"Patient/{pid} is not known"
    )
    key = f"{rtype}?patient=Patient/{pid}"
    used = {"patient", "subject", "_revinclude"} & set(q) | {c.param for c in crit}
    asked = paging.Asked(caller, situation, key, base, f"{base}/{rtype}", q, used, "search-type")
    if "_cursor" in q:
        return await paging.stored_page(request, asked)
    fed = await record.federate(pid, frozenset({rtype, "Patient"}), pref.wait, person)
    # Consent and scopes first, the search criteria on what is left: what a criterion
    # matched among withheld data must shape nothing of the answer.
    guard: Guard = request.app.state.guard
    shown = await looked_up(
        request,
        guard.filter,
        situation,
        access.visible(caller, (r for r in fed.resources if r["resourceType"] == rtype), "s"),
        True,  # the record's resources, shared while its sources answer the same
        limit=None,
    )
    request.state.break_glass = shown.break_glass
    matches = [r for r in shown.resources if all(c.matches(r) for c in crit)]
    includes = access.provenance_for(caller, fed.provenance, matches) if revinclude else []
    snap = paging.snapshot(request, fed, situation, shown, key, matches, includes)
    return await paging.first_page(
        request, asked, paging.ready(request, asked, snap), fed.encodings
    )
