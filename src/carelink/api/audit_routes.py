"""``GET /fhir/AuditEvent``: who looked at a record (IHE BALP / FHIR search).

Who may read the trail:

- privacy officers (R0001) and Caldicott Guardians (R5105), any patient's or
  the whole trail, with an oversight purpose of use (``OVERSIGHT_PURPOSES``);
- a citizen, their own record's events only (``patient`` defaults to it),
  with the purpose the patient asks under (PATRQT) or a direct-care one;
- nobody else. Every caller also needs a scope granting search of AuditEvent.

Search parameters: ``patient`` (gateway id or a source's Patient id),
``date`` (repeatable, with ``eq ne lt gt le ge sa eb ap``), ``agent`` (the
requesting user, as a token: ``issuer|subject`` that user exactly; ``subject``,
or a reference ending in it, that subject at any issuer, as it always meant,
rows stored before issuers were recorded included; ``|subject`` those older
rows only; ``\\|`` and ``\\\\`` escape a bar and a backslash, as FHIR token
search says; ``agent:identifier`` the same, FHIR's way of searching a reference
by its identifier, where a bare value is the subject whatever ``/`` it holds),
``entity-type`` (1 person, 2 system object), ``outcome``
(comma list) and ``_count``. Results are newest first, with an exact
``total``; ``next`` links page by keyset (``_cursor``) so events written
while someone pages, their own reads included, never shift a page. Any
other parameter is a 400: a filter silently ignored would mislead an
investigation. Reading the trail is itself audited, under the patient read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.audit_subject import person_for
from carelink.api.deps import audit, context, router, stored
from carelink.api.responses import fhir
from carelink.auth import Principal
from carelink.errors import AccessDenied, InvalidRequest
from carelink.fhir import searchset
from carelink.fhir.search import DateQuery, parse_date
from carelink.storage.audit_search import AuditQuery, AuditSearch, Span

OVERSIGHT_ROLES = frozenset({"R0001", "R5105"})
#: v3 ActReason purposes for which oversight roles read the trail
OVERSIGHT_PURPOSES = frozenset({"HOPERAT", "HCOMPL", "HSYSADMIN"})
PATIENT_PURPOSES = frozenset({"PATRQT"})
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
KNOWN = frozenset(
    {"patient", "date", "agent", "agent:identifier", "entity-type", "outcome", "_count", "_cursor"}
)
KNOWN_RESULT = frozenset({"_format"})


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spans(d: DateQuery) -> tuple[Span, ...]:
    """The recorded instants a date value selects, as half-open spans."""
    lo, hi = _stamp(d.range.start), _stamp(d.range.end)
    return {
        "eq": ((lo, hi),),
        "ap": ((lo, hi),),
        "ne": ((None, lo), (hi, None)),
        "gt": ((hi, None),),
        "sa": ((hi, None),),
        "ge": ((lo, None),),
        "lt": ((None, lo),),
        "eb": ((None, lo),),
        "le": ((None, hi),),
    }[d.prefix]


def _may_read(request: Request, caller: Principal, patient: str | None) -> str | None:
    """The patient the caller may read the trail of (None: the whole trail), or 403."""
    access.require(caller, "AuditEvent", "s")
    if caller.patient is not None:
        if patient is not None and patient != caller.patient:
            raise AccessDenied("a citizen may see only who accessed their own record")
        allowed = PATIENT_PURPOSES | set(request.app.state.policy.source.directCarePurposes)
        if caller.purpose is not None and caller.purpose not in allowed:
            raise AccessDenied(f"purpose of use {caller.purpose} is not for reading the audit")
        return caller.patient
    if caller.role not in OVERSIGHT_ROLES:
        raise AccessDenied("only a privacy officer or Caldicott Guardian may read audit events")
    if caller.purpose not in OVERSIGHT_PURPOSES:
        raise AccessDenied(
            f"the audit trail is read for oversight ({', '.join(sorted(OVERSIGHT_PURPOSES))}), "
            f"not purpose {caller.purpose or '(none)'}"
        )
    return patient


def _agent(said: str, reference: bool = True) -> tuple[str | None, str]:
    """``issuer|subject`` (FHIR token search, ``\\`` escaping a bar or a backslash) as
    the issuer and the subject; a value with no bar but escaped ones, unchanged: the
    subject at any issuer (a ``reference``'s last segment, for ``agent``)."""
    parts: list[str] = []
    part: list[str] = []
    escaped = False
    for ch in said:
        if escaped:
            part.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|" and not parts:
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
    if not parts:  # a bare value, or a reference: its last segment, as it was always read
        return None, said.rsplit("/", 1)[-1] if reference else said
    if escaped:
        raise InvalidRequest("agent ends in an escape (\\) with nothing to escape", "agent")
    return parts[0], "".join(part)


def _query(q: dict[str, list[str]], patient: str | None) -> AuditQuery:
    bad = sorted(set(q) - KNOWN - KNOWN_RESULT)
    if bad:
        raise InvalidRequest(f"AuditEvent search does not support '{bad[0]}'", bad[0])
    has_patient = None
    if "entity-type" in q:
        code = q["entity-type"][-1].removeprefix(f"{ENTITY_TYPE}|")
        if code not in ("1", "2"):
            raise InvalidRequest("entity-type must be 1 (person) or 2 (system object)")
        # every event names its query (2); those about a patient also name the person (1)
        has_patient = True if code == "1" else None
    if "agent" in q and "agent:identifier" in q:
        raise InvalidRequest("search by agent or by agent:identifier, not both", "agent")
    issuer, agent = None, None
    if "agent" in q:
        issuer, agent = _agent(q["agent"][-1])
    elif "agent:identifier" in q:
        issuer, agent = _agent(q["agent:identifier"][-1], reference=False)
    outcomes = tuple(o for v in q.get("outcome", []) for o in v.split(",") if o)
    dates = tuple(spans(parse_date(v, "date")) for v in q.get("date", []))
    return AuditQuery(patient, agent or None, has_patient, outcomes, dates, issuer)


@router.fhir_get("/AuditEvent")
async def audit_events(request: Request) -> Response:
    """The audit trail (of one patient, or for oversight, of everyone), newest first."""
    record, caller, base = await context(request)
    P.check_format(request)
    q = P.multi(request)
    asked = q.get("patient", [""])[-1].strip() or None
    found = await stored(request, person_for, record, asked) if asked else None
    named = (found or asked.removeprefix("Patient/")) if asked else None
    patient = _may_read(request, caller, named)
    query = _query(q, patient)
    settings = request.app.state.settings
    count = P.int_param(q, "_count", settings.default_page_size, settings.max_page_size)
    cursor = q.get("_cursor", [""])[-1]
    if cursor and not cursor.isdigit():
        raise InvalidRequest("_cursor is not one this server gave", "_cursor")
    search: AuditSearch = request.app.state.audit_search
    total = await stored(request, search.count, query)
    rows = await stored(request, search.page, query, count, int(cursor) if cursor else None)
    await audit(request, "search-type", [patient])
    kept = [(k, v) for k in sorted(q) if k not in ("_cursor", "_count", "patient") for v in q[k]]
    kept = [*([("patient", patient)] if patient else []), *kept, ("_count", str(count))]
    url = f"{base}/AuditEvent?{urlencode(kept)}"
    links = {"self": f"{url}&_cursor={cursor}" if cursor else url, "first": url}
    if len(rows) == count and count > 0:
        links["next"] = f"{url}&_cursor={rows[-1][0]}"
    events = [orjson.loads(e) for _, e in rows]
    return fhir(searchset(base, events, total=total, links=links))
