"""Patients' choices through the FHIR API, break-glass and its review, the decision service.

- ``Consent``: create (POST), read, update (PUT, optimistic with If-Match),
  revoke (DELETE), search by patient. Writers need a scope granting the
  interaction on Consent and a role the policy lists in ``consentManagers``
  (or, where the policy allows, a citizen for their own record).
- ``POST /fhir/Patient/$break-glass``: an emergency override for one
  patient, for the policy's number of minutes, by roles the policy allows,
  with purpose ETREAT and a reason; audited, and put on the review list.
- ``GET /fhir/Task?status=requested``: that review list, for the policy's
  reviewers (privacy officer R0001, Caldicott Guardian R5105);
  ``POST /fhir/Task/{id}/$review`` completes an item.
- ``POST /cds-services/patient-consent-consult``: the decision as a service,
  in the CDS Hooks shape of the LEAP consent decision service.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api.deps import actor, audit, context, router
from carelink.api.responses import fhir, outcome
from carelink.audit.events import REFUSED
from carelink.auth import Principal
from carelink.consent import Guard, Policy, validate
from carelink.errors import AccessDenied, InvalidRequest, NotFound, UnprocessableResource
from carelink.federation import SharedRecord
from carelink.fhir import NHS_NUMBER_SYSTEM, dumps, problem, searchset
from carelink.fhir.nhs import normalise
from carelink.storage import ConsentRow, ConsentStore, GrantRow

Json = dict[str, Any]
REVIEW_OUTCOMES = ("appropriate", "inappropriate")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stored(row: ConsentRow) -> Json:
    body: Json = orjson.loads(row.body)
    return body


def _may_manage(request: Request, caller: Principal, patient_id: str, perm: str) -> None:
    policy: Policy = request.app.state.policy
    access.require(caller, "Consent", perm)
    access.in_compartment(caller, patient_id)
    if caller.patient is not None:
        if not policy.source.citizensManageOwn:
            raise AccessDenied("this ICS does not let citizens record consent through the API")
        return
    if caller.role not in policy.source.consentManagers:
        raise AccessDenied(f"role {caller.role} may not record patients' consent")


def _current(store: ConsentStore, cid: str) -> ConsentRow:
    row = store.get(cid)
    if row is None:
        raise NotFound(f"Consent/{cid} is not known")
    return row


async def _body(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON") from None


@router.fhir_route("/Consent", ["POST"])
async def create_consent(request: Request) -> Response:
    """Record a patient's choice; in force from the next request, in every gateway process."""
    record, caller, base = await context(request)
    consent = await _body(request)
    patient_id = validate(consent, lambda p: record.person(p) is not None)
    _may_manage(request, caller, patient_id, "c")
    consent_id = uuid.uuid4().hex
    stamp = _now()
    consent = {**consent, "id": consent_id, "meta": {"versionId": "1", "lastUpdated": stamp}}
    store: ConsentStore = request.app.state.consents
    row = ConsentRow(consent_id, patient_id, consent["status"], 1, stamp, orjson.dumps(consent))
    store.put(row, None)
    await audit(request, "create", [patient_id])
    return fhir(
        consent,
        201,
        headers={"Location": f"{base}/Consent/{consent_id}/_history/1", "ETag": 'W/"1"'},
    )


@router.fhir_route("/Consent/{cid}", ["PUT"])
async def update_consent(request: Request) -> Response:
    """Replace a consent (e.g. status inactive to withdraw an objection)."""
    record, caller, _ = await context(request)
    cid = request.path_params["cid"]
    store: ConsentStore = request.app.state.consents
    current = _current(store, cid)
    consent = await _body(request)
    if isinstance(consent, dict) and consent.get("id") != cid:
        raise InvalidRequest("the body's id must match the URL", "id")
    patient_id = validate(consent, lambda p: record.person(p) is not None)
    _may_manage(request, caller, current.patient_id, "u")
    if patient_id != current.patient_id:
        raise UnprocessableResource("a consent cannot move to another patient", "patient")
    wanted = request.headers.get("if-match")
    if wanted is not None and wanted.strip().removeprefix("W/").strip('"') != str(current.version):
        return outcome(412, "conflict", f"Consent/{cid} is at version {current.version}")
    version, stamp = current.version + 1, _now()
    consent = {**consent, "meta": {"versionId": str(version), "lastUpdated": stamp}}
    row = ConsentRow(cid, patient_id, consent["status"], version, stamp, orjson.dumps(consent))
    if not store.put(row, current.version):
        return outcome(409, "conflict", f"Consent/{cid} was changed meanwhile; read it again")
    await audit(request, "update", [patient_id])
    return fhir(consent, headers={"ETag": f'W/"{version}"'})


@router.fhir_route("/Consent/{cid}", ["DELETE"])
async def delete_consent(request: Request) -> Response:
    """Revoke a consent: it stops having any effect at once."""
    _, caller, _ = await context(request)
    cid = request.path_params["cid"]
    store: ConsentStore = request.app.state.consents
    current = _current(store, cid)
    _may_manage(request, caller, current.patient_id, "d")
    store.delete(cid)
    await audit(request, "delete", [current.patient_id])
    return Response(status_code=204)


@router.fhir_get("/Consent/{cid}")
async def read_consent(request: Request) -> Response:
    """One consent."""
    _, caller, _ = await context(request)
    cid = request.path_params["cid"]
    access.require(caller, "Consent", "r")
    row = _current(request.app.state.consents, cid)
    access.in_compartment(caller, row.patient_id)
    await audit(request, "read", [row.patient_id])
    return fhir(row.body, headers={"ETag": f'W/"{row.version}"'})


@router.fhir_get("/Consent")
async def search_consent(request: Request) -> Response:
    """A patient's consents (``patient`` is required)."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "s")
    patient = request.query_params.get("patient", "").removeprefix("Patient/")
    if not patient:
        raise InvalidRequest("Consent search needs the patient parameter", "patient")
    access.in_compartment(caller, patient)
    rows = request.app.state.consents.for_patient(patient)
    status = request.query_params.get("status")
    found = [_stored(r) for r in rows if status is None or r.status == status]
    await audit(request, "search-type", [patient])
    return fhir(searchset(base, found, total=len(found), links={"self": f"{base}/Consent"}))


def _parameter(params: Json, name: str) -> Json | None:
    for p in params.get("parameter", ()):
        if isinstance(p, dict) and p.get("name") == name:
            return p
    return None


def _person_of(record: SharedRecord, params: Json) -> str:
    ref = _parameter(params, "patient")
    if ref is not None:
        pid = str(ref.get("valueReference", {}).get("reference", "")).removeprefix("Patient/")
        if record.person(pid) is None:
            raise NotFound("that patient is not known")
        return pid
    ident = _parameter(params, "identifier")
    if ident is None:
        raise InvalidRequest("give the patient (valueReference) or identifier (NHS number)")
    value = ident.get("valueIdentifier", {})
    if value.get("system") != NHS_NUMBER_SYSTEM or problem(str(value.get("value", ""))):
        raise InvalidRequest("identifier must be a valid NHS number", "identifier")
    person = record.by_nhs_number(normalise(str(value["value"])))
    if person is None:
        raise NotFound("that patient is not known")
    return person.id


@router.fhir_route("/Patient/$break-glass", ["POST"])
async def break_glass(request: Request) -> Response:
    """Emergency access to one patient for a short time, audited and reviewed."""
    record, caller, base = await context(request)
    policy: Policy = request.app.state.policy
    bg = policy.source.breakGlass
    params = await _body(request)
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise InvalidRequest("send a Parameters resource (patient or identifier, reason, purpose)")
    pid = _person_of(record, params)
    reason = str((_parameter(params, "reason") or {}).get("valueString", "")).strip()
    purpose = (_parameter(params, "purpose") or {}).get("valueCode")
    if caller.patient is not None or caller.role not in bg.roles:
        await audit(request, "operation", [pid], REFUSED, "role may not break glass")
        raise AccessDenied(f"role {caller.role} may not break glass")
    if purpose != bg.purpose:
        raise InvalidRequest(f"break-glass needs purpose {bg.purpose}", "purpose")
    if len(reason) < 10:
        raise InvalidRequest("break-glass needs a reason (at least 10 characters)", "reason")
    now = time.time()
    grant = GrantRow(
        uuid.uuid4().hex,
        caller.subject,
        caller.organisation,
        caller.role,
        pid,
        reason,
        now,
        now + bg.minutes * 60,
        "requested",
        None,
        None,
        None,
        None,
    )
    request.app.state.consents.grant(grant)
    request.state.break_glass = True
    await audit(request, "operation", [pid])
    return fhir(_task(grant, base), 201, headers={"Location": f"{base}/Task/{grant.id}"})


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _task(g: GrantRow, base: str) -> Json:
    """A break-glass grant as the FHIR Task its review is."""
    task: Json = {
        "resourceType": "Task",
        "id": g.id,
        "status": g.review_status,
        "intent": "order",
        "code": {"text": "break-glass review"},
        "for": {"reference": f"Patient/{g.patient_id}"},
        "authoredOn": _instant(g.granted),
        "requester": {
            "identifier": {"value": g.subject},
            "display": f"{g.role or '?'} at {g.organisation or '?'}",
        },
        "reasonCode": {"text": g.reason},
        "restriction": {"period": {"start": _instant(g.granted), "end": _instant(g.expires)}},
    }
    if g.review_status == "completed":
        task["owner"] = {"identifier": {"value": g.reviewer}}
        task["output"] = [{"type": {"text": "outcome"}, "valueCode": g.review_outcome}]
        if g.review_note:
            task["note"] = [{"text": g.review_note}]
        task["lastModified"] = _instant(g.reviewed or g.granted)
    return task


def _reviewer(request: Request, caller: Principal) -> None:
    policy: Policy = request.app.state.policy
    if caller.patient is not None or caller.role not in policy.source.breakGlass.reviewers:
        raise AccessDenied("only the policy's reviewers work through break-glass reviews")


@router.fhir_get("/Task")
async def review_list(request: Request) -> Response:
    """Break-glass reviews, oldest first (``status=requested`` for those still to do)."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    status = request.query_params.get("status")
    tasks = [_task(g, base) for g in request.app.state.consents.grants(status)]
    await audit(request, "search-type", sorted({t["for"]["reference"][8:] for t in tasks}))
    return fhir(searchset(base, tasks, total=len(tasks), links={"self": f"{base}/Task"}))


@router.fhir_get("/Task/{tid}")
async def read_review(request: Request) -> Response:
    """One break-glass review."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    grant = request.app.state.consents.grant_by_id(request.path_params["tid"])
    if grant is None:
        raise NotFound("no such review")
    await audit(request, "read", [grant.patient_id])
    return fhir(_task(grant, base))


@router.fhir_route("/Task/{tid}/$review", ["POST"])
async def complete_review(request: Request) -> Response:
    """Complete a review: outcome appropriate | inappropriate, and a note."""
    _, caller, base = await context(request)
    _reviewer(request, caller)
    params = await _body(request)
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        raise InvalidRequest("send a Parameters resource (outcome, note)")
    result = (_parameter(params, "outcome") or {}).get("valueCode")
    if result not in REVIEW_OUTCOMES:
        raise InvalidRequest("outcome must be appropriate or inappropriate", "outcome")
    note = str((_parameter(params, "note") or {}).get("valueString", ""))
    store: ConsentStore = request.app.state.consents
    tid = request.path_params["tid"]
    grant = store.grant_by_id(tid)
    if grant is None:
        raise NotFound("no such review")
    if not store.review(tid, caller.subject, result, note, time.time()):
        return outcome(409, "conflict", "this review is already completed")
    await audit(request, "operation", [grant.patient_id])
    done = store.grant_by_id(tid)
    return fhir(_task(done or grant, base))


async def consult_discovery(request: Request) -> Response:
    """CDS Hooks discovery."""
    services = [
        {
            "hook": "patient-consent-consult",
            "id": "patient-consent-consult",
            "title": "carelink consent decision",
            "description": "Given patient, actor, purpose and data: permit, deny or no "
            "consent, and why, under this ICS's policy and the patient's Consents.",
        }
    ]
    return Response(dumps({"services": services}), media_type="application/json")


async def consult(request: Request) -> Response:
    """The consent decision as a service (LEAP ``patient-consent-consult`` shape)."""
    record, caller, base = await context(request)
    access.require(caller, "Consent", "r")
    body = await _body(request)
    ctx = body.get("context") if isinstance(body, dict) else None
    if body.get("hook") != "patient-consent-consult" or not isinstance(ctx, dict):
        raise InvalidRequest("hook must be patient-consent-consult, with a context")
    pid = _consulted_patient(record, ctx)
    access.in_compartment(caller, pid)
    subject = _actor_for(ctx, caller)
    guard: Guard = request.app.state.guard
    person = record.person(pid)
    situation = guard.situation(subject, pid, orjson.loads(person.patient) if person else None)
    data = ctx.get("data") or {}
    probe: Json = {
        "resourceType": data.get("class", "Basic"),
        "id": "-",
        "meta": {"security": [{"code": c} for c in data.get("securityLabel", ())]},
    }
    if data.get("source"):
        probe["meta"]["source"] = next(
            (u for u, n in guard.source_uris.items() if n == data["source"]), None
        )
    decision = guard.decide(situation, probe)
    if decision.consents:
        summary = "CONSENT_PERMIT" if decision.permit else "CONSENT_DENY"
    else:
        summary = "NO_CONSENT"
    card = {
        "summary": summary,
        "detail": f"{decision.reason} ({'permit' if decision.permit else 'deny'}, "
        f"basis {decision.basis})",
        "indicator": {"CONSENT_PERMIT": "info", "CONSENT_DENY": "critical"}.get(summary, "warning"),
        "source": {"label": "carelink consent decision", "url": base},
        "extension": {
            "decision": "permit" if decision.permit else "deny",
            "basis": decision.basis,
            "basedOn": [f"Consent/{c}" for c in decision.consents],
            "policy": request.app.state.policy.version,
            "obligations": sorted(decision.categories),
        },
    }
    await audit(request, "operation", [pid])
    return Response(dumps({"cards": [card]}), media_type="application/json")


def _consulted_patient(record: SharedRecord, ctx: Json) -> str:
    ids = ctx.get("patientId")
    for ident in ids if isinstance(ids, list) else [ids]:
        if not isinstance(ident, dict):
            continue
        if ident.get("system") == NHS_NUMBER_SYSTEM and not problem(str(ident.get("value"))):
            person = record.by_nhs_number(normalise(str(ident["value"])))
            if person is not None:
                return person.id
        if ident.get("system") in (None, "Patient") and record.person(str(ident.get("value"))):
            return str(ident["value"])
    raise NotFound("patientId does not name a patient known to the gateway")


def _actor_for(ctx: Json, caller: Principal) -> Any:
    """The actor asked about: the context's, else the caller."""
    me = actor(caller)
    org, role = me.organisation, me.role
    for a in ctx.get("actor") or []:
        if (
            isinstance(a, dict)
            and a.get("system") == "https://fhir.nhs.uk/Id/ods-organization-code"
        ):
            org = str(a.get("value"))
        if isinstance(a, dict) and a.get("system", "").endswith("NHSDigital-SDS-JobRoleCode"):
            role = str(a.get("value"))
    purposes = ctx.get("purposeOfUse")
    purpose = purposes[0] if isinstance(purposes, list) and purposes else purposes or me.purpose
    return type(me)(me.subject, role, org, str(purpose), None)


router.add_route("/cds-services", consult_discovery, methods=["GET"], include_in_schema=False)
router.add_route(
    "/cds-services/patient-consent-consult", consult, methods=["POST"], include_in_schema=False
)
