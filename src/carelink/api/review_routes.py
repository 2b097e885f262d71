"""Break-glass, and the review list it and reviewable consent changes go on.

- ``POST /fhir/Patient/$break-glass``: an emergency override for one
  patient, for the policy's number of minutes, by roles the policy allows,
  with purpose ETREAT and a reason; audited, and put on the review list. The
  grant is bound to the caller's full identity (issuer, subject,
  organisation, role): the same subject at another organisation or in
  another role does not hold it.
- ``GET /fhir/Task?status=requested``: that review list (break-glass grants,
  and consent changes made for a patient by someone else that withdraw an
  objection or unlock a sensitive category), for the policy's reviewers
  (privacy officer R0001, Caldicott Guardian R5105);
  ``POST /fhir/Task/{id}/$review`` completes an item, never by the person
  who did what is reviewed (compared by full identity, by issuer and
  subject, and by subject alone: another role profile is the same human).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from carelink.api.bodies import json_body
from carelink.api.deps import actor, audit, context, router, stored
from carelink.api.responses import fhir, outcome
from carelink.auth import Principal
from carelink.consent import Guard, Policy
from carelink.errors import AccessDenied, InvalidRequest, NotFound
from carelink.federation import SharedRecord
from carelink.fhir import NHS_NUMBER_SYSTEM, problem, searchset
from carelink.fhir.nhs import normalise
from carelink.storage import ConsentStore, GrantRow

Json = dict[str, Any]
REVIEW_OUTCOMES = ("appropriate", "inappropriate")
BREAK_GLASS = "break-glass"
CONSENT_CHANGE = "consent-change"


def parameter(params: Json, name: str) -> Json | None:
    """The named entry of a Parameters resource."""
    for p in params.get("parameter", ()) or ():
        if isinstance(p, dict) and p.get("name") == name:
            return p
    return None


def _person_of(record: SharedRecord, params: Json) -> str:
    ref = parameter(params, "patient")
    if ref is not None:
        value = ref.get("valueReference")
        pid = str((value if isinstance(value, dict) else {}).get("reference", ""))
        pid = pid.removeprefix("Patient/")
        if record.person(pid) is None:
            raise NotFound("that patient is not known")
        return pid
    ident = parameter(params, "identifier")
    if ident is None:
        raise InvalidRequest("give the patient (valueReference) or identifier (NHS number)")
    value = ident.get("valueIdentifier")
    value = value if isinstance(value, dict) else {}
    if value.get("system") != NHS_NUMBER_SYSTEM or problem(str(value.get("value", ""))):
        raise InvalidRequest("identifier must be a valid NHS number", "identifier")
    person = record.by_nhs_number(normalise(str(value["value"])))
    if person is None:
        raise NotFound("that patient is not known")
    return person.id


def _text(params: Json, name: str, key: str) -> Any:
    return (parameter(params, name) or {}).get(key)


def new_review(
    caller: Principal, patient_id: str, reason: str, now: float, kind: str, minutes: int = 0
) -> GrantRow:
    """A review item made by ``caller``: a break-glass grant (``minutes`` of access) or a
    consent change (no access at all: it expires as it is made)."""
    return GrantRow(
        uuid.uuid4().hex,
        caller.subject,
        caller.organisation,
        caller.role,
        patient_id,
        reason,
        now,
        now + minutes * 60,
        "requested",
        None,
        None,
        None,
        None,
        kind,
        caller.identity,
        caller.person,
    )


@router.fhir_route("/Patient/$break-glass", ["POST"])
async def break_glass(request: Request) -> Response:
    """Emergency access to one patient for a short time, audited and reviewed."""
    record, caller, base = await context(request)
    policy: Policy = request.app.state.policy
    bg = policy.source.breakGlass
    guard: Guard = request.app.state.guard
    guard.require_purpose(actor(caller))
    if caller.patient is not None or caller.role not in bg.roles:
        # refused before the patient is looked up: no answer tells who is known
        raise AccessDenied(f"role {caller.role} may not break glass")
    params = await json_body(request)
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise InvalidRequest("send a Parameters resource (patient or identifier, reason, purpose)")
    pid = await stored(request, _person_of, record, params)
    reason = str(_text(params, "reason", "valueString") or "").strip()
    purpose = _text(params, "purpose", "valueCode")
    if purpose != bg.purpose:
        raise InvalidRequest(f"break-glass needs purpose {bg.purpose}", "purpose")
    if len(reason) < 10:
        raise InvalidRequest("break-glass needs a reason (at least 10 characters)", "reason")
    if len(reason) > 2000:
        raise InvalidRequest("the reason is too long (at most 2000 characters)", "reason")
    if "\x00" in reason:  # no database stores a NUL in text (PostgreSQL refuses it)
        raise InvalidRequest("the reason may not contain a NUL character", "reason")
    grant = new_review(caller, pid, reason, time.time(), BREAK_GLASS, bg.minutes)
    await stored(request, request.app.state.consents.grant, grant)
    request.state.break_glass = True
    await audit(request, "operation", [pid])
    return fhir(task(grant, base), 201, headers={"Location": f"{base}/Task/{grant.id}"})


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def task(g: GrantRow, base: str) -> Json:
    """A review item as the FHIR Task it is."""
    consent_change = g.kind == CONSENT_CHANGE
    out: Json = {
        "resourceType": "Task",
        "id": g.id,
        "status": g.review_status,
        "intent": "order",
        "code": {"text": "consent change review" if consent_change else "break-glass review"},
        "for": {"reference": f"Patient/{g.patient_id}"},
        "authoredOn": _instant(g.granted),
        "requester": {
            "identifier": {"value": g.subject},
            "display": f"{g.role or '?'} at {g.organisation or '?'}",
        },
        "reasonCode": {"text": g.reason},
    }
    if consent_change:
        out["focus"] = {"reference": g.reason.split(":", 1)[0]}
    else:
        out["restriction"] = {"period": {"start": _instant(g.granted), "end": _instant(g.expires)}}
    if g.review_status == "completed":
        out["owner"] = {"identifier": {"value": g.reviewer}}
        out["output"] = [{"type": {"text": "outcome"}, "valueCode": g.review_outcome}]
        if g.review_note:
            out["note"] = [{"text": g.review_note}]
        out["lastModified"] = _instant(g.reviewed or g.granted)
    return out


def _reviewer(request: Request, caller: Principal) -> None:
    policy: Policy = request.app.state.policy
    guard: Guard = request.app.state.guard
    guard.require_purpose(actor(caller))
    if caller.patient is not None or caller.role not in policy.source.breakGlass.reviewers:
        raise AccessDenied("only the policy's reviewers work through break-glass reviews")


def own_work(caller: Principal, g: GrantRow) -> bool:
    """Did ``caller`` do what ``g`` reviews? Full identity, issuer and subject, or the subject
    alone: a reviewer token with another role or organisation is still the same human."""
    return caller.identity == g.actor or caller.person == g.person or caller.subject == g.subject


@router.fhir_get("/Task")
async def review_list(request: Request) -> Response:
    """Reviews, oldest first (``status=requested`` for those still to do)."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    status = request.query_params.get("status")
    tasks = [
        task(g, base) for g in await stored(request, request.app.state.consents.grants, status)
    ]
    await audit(request, "search-type", sorted({t["for"]["reference"][8:] for t in tasks}))
    return fhir(searchset(base, tasks, total=len(tasks), links={"self": f"{base}/Task"}))


@router.fhir_get("/Task/{tid}")
async def read_review(request: Request) -> Response:
    """One review."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    grant = await stored(
        request, request.app.state.consents.grant_by_id, request.path_params["tid"]
    )
    if grant is None:
        raise NotFound("no such review")
    await audit(request, "read", [grant.patient_id])
    return fhir(task(grant, base))


@router.fhir_route("/Task/{tid}/$review", ["POST"])
async def complete_review(request: Request) -> Response:
    """Complete a review: outcome appropriate | inappropriate, and a note."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    params = await json_body(request)
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise InvalidRequest("send a Parameters resource (outcome, note)")
    result = _text(params, "outcome", "valueCode")
    if result not in REVIEW_OUTCOMES:
        raise InvalidRequest("outcome must be appropriate or inappropriate", "outcome")
    note = str(_text(params, "note", "valueString") or "")[:4000]
    if "\x00" in note:  # no database stores a NUL in text (PostgreSQL refuses it)
        raise InvalidRequest("the note may not contain a NUL character", "note")
    store: ConsentStore = request.app.state.consents
    tid = request.path_params["tid"]
    grant = await stored(request, store.grant_by_id, tid)
    if grant is None:
        raise NotFound("no such review")
    if own_work(caller, grant):
        raise AccessDenied("nobody reviews their own break-glass or consent change")
    reviewed = await stored(
        request, store.review, tid, caller.subject, str(result), note, time.time(), caller.identity
    )
    if not reviewed:
        return outcome(409, "conflict", "this review is already completed")
    await audit(request, "operation", [grant.patient_id])
    done = await stored(request, store.grant_by_id, tid)
    return fhir(task(done or grant, base))
