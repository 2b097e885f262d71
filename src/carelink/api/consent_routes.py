"""Patients' choices through the FHIR API, and the decision as a service.

- ``Consent``: create (POST), read, update (PUT, optimistic with If-Match),
  revoke (DELETE: a new, inactive version; nothing is deleted), history
  (``/Consent/{id}/_history``), search by patient.
- ``POST /cds-services/patient-consent-consult``: the decision as a service,
  in the CDS Hooks shape of the LEAP consent decision service.

Every route is consent-protected itself (``consent.stewardship``, policy
``consentAccess``): only the patient (or those acting for them), privacy
officers and the patient's registered practice learn anything about a
patient's Consents. Everyone else gets exactly the answer an unknown patient
or Consent gets, so no route tells whether someone objected. Writers also
need a role in ``consentManagers``; the server records who entered each
version (``performer``, ``verification``) and raises a review Task when
someone other than the patient withdraws an objection or unlocks a
sensitive category.
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
from carelink.api.bodies import json_body
from carelink.api.deps import actor, audit, context, router, stored
from carelink.api.responses import fhir, outcome
from carelink.api.review_routes import CONSENT_CHANGE, new_review
from carelink.audit.events import REFUSED
from carelink.auth import Principal
from carelink.consent import Guard, Policy, Situation, validate
from carelink.consent.guard import registered_practice
from carelink.consent.stewardship import may_change, may_see, provision_count, review_reason
from carelink.errors import (
    AccessDenied,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnprocessableResource,
)
from carelink.federation import SharedRecord
from carelink.fhir import NHS_NUMBER_SYSTEM, dumps, problem, searchset
from carelink.fhir.nhs import normalise
from carelink.storage import ConsentRow, ConsentStore

Json = dict[str, Any]
RETIRED = ("inactive", "entered-in-error")
UNKNOWN_PATIENT = "patientId does not name a patient known to the gateway"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _practice(record: SharedRecord, patient_id: str) -> str | None:
    person = record.person(patient_id)
    return registered_practice(orjson.loads(person.patient)) if person else None


def _purpose(request: Request, caller: Principal) -> None:
    """Consent routes serve direct care (and the patient): the purpose is checked first."""
    guard: Guard = request.app.state.guard
    guard.require_purpose(actor(caller))


def _sees(request: Request, caller: Principal, patient_id: str) -> bool:
    """Does the patient exist, and may the caller know anything about their Consents?"""
    record: SharedRecord = request.app.state.record
    if record.person(patient_id) is None:
        return False
    policy: Policy = request.app.state.policy
    return may_see(policy, actor(caller), patient_id, _practice(record, patient_id))


def _may_change(request: Request, caller: Principal, patient_id: str) -> None:
    """Refuse (403) a caller who may see but not change this patient's choices."""
    policy: Policy = request.app.state.policy
    record: SharedRecord = request.app.state.record
    if not may_change(policy, actor(caller), patient_id, _practice(record, patient_id)):
        raise AccessDenied("this caller may not change this patient's consent")


async def _unknown(request: Request, patient_id: str | None, message: str) -> NotFound:
    """The not-found answer, audited as a refusal (naming the patient when there is one,
    so a privacy officer sees the probing; the caller sees only "not known")."""
    await audit(request, "operation", [patient_id], REFUSED, "no access to this consent")
    return NotFound(message)


async def _visible_row(request: Request, caller: Principal, cid: str) -> ConsentRow:
    """The Consent, if it exists and the caller may see it; else the unknown answer."""

    def seen() -> tuple[ConsentRow | None, bool]:
        row: ConsentRow | None = request.app.state.consents.get(cid)
        return row, row is not None and _sees(request, caller, row.patient_id)

    row, sees = await stored(request, seen)
    if row is None or not sees:
        raise await _unknown(
            request, row.patient_id if row else None, f"Consent/{cid} is not known"
        )
    return row


async def _consent_body(request: Request) -> Any:
    """A Consent body within the Consent limits (bytes, provisions), before validation."""
    settings = request.app.state.settings
    declared = request.headers.get("content-length") or "0"
    if not declared.isdigit() or int(declared) > settings.max_consent_bytes:
        raise PayloadTooLarge(f"a Consent is at most {settings.max_consent_bytes} bytes")
    consent = await json_body(request)
    if len(await request.body()) > settings.max_consent_bytes:  # chunked: no Content-Length
        raise PayloadTooLarge(f"a Consent is at most {settings.max_consent_bytes} bytes")
    if isinstance(consent, dict) and isinstance(consent.get("provision"), dict):
        count = provision_count(consent)
        if count > settings.max_consent_provisions:
            raise UnprocessableResource(
                f"a Consent holds at most {settings.max_consent_provisions} provisions",
                "provision",
            )
    return consent


def _validated(request: Request, caller: Principal, consent: Any) -> str:
    """The patient id of a valid Consent; a patient the caller may not see is unknown."""
    return validate(consent, lambda pid: _sees(request, caller, pid))


def _entered_by(caller: Principal, patient_id: str, stamp: str) -> Json:
    """Who entered this version: ``performer`` and ``verification`` from the token."""
    if caller.patient is not None:
        who: Json = {"reference": f"Patient/{patient_id}"}
    else:
        who = {
            "identifier": {
                "system": caller.issuer or "urn:carelink:unknown",
                "value": caller.subject,
            },
            "display": f"{caller.role or '?'} at {caller.organisation or '?'}",
        }
    return {
        "performer": [who],
        "verification": [{"verified": True, "verifiedWith": who, "verificationDate": stamp}],
    }


async def _store(
    request: Request,
    caller: Principal,
    consent: Json,
    before: ConsentRow | None,
    base: str,
) -> ConsentRow | None:
    """Store a new version (None on a version conflict) and raise its review if it needs one."""
    store: ConsentStore = request.app.state.consents
    cid = before.id if before else uuid.uuid4().hex
    version, stamp = (before.version + 1 if before else 1), _now()
    patient_id = before.patient_id if before else str(consent["patient"]["reference"])[8:]
    body = {
        **consent,
        "id": cid,
        "meta": {"versionId": str(version), "lastUpdated": stamp},
        **_entered_by(caller, patient_id, stamp),
    }
    row = ConsentRow(cid, patient_id, str(body["status"]), version, stamp, orjson.dumps(body))
    previous = orjson.loads(before.body) if before else None
    why = review_reason(request.app.state.policy, actor(caller), previous, body)

    review = (
        None
        if why is None
        else new_review(
            caller,
            patient_id,
            f"Consent/{cid}/_history/{version}: {why}",
            time.time(),
            CONSENT_CHANGE,
        )
    )
    expected = before.version if before else None
    return row if await stored(request, store.put, row, expected, review) else None


@router.fhir_route("/Consent", ["POST"])
async def create_consent(request: Request) -> Response:
    """Record a patient's choice; in force from the next request, in every gateway process."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "c")
    _purpose(request, caller)
    consent = await _consent_body(request)
    patient_id = await stored(request, _validated, request, caller, consent)
    await stored(request, _may_change, request, caller, patient_id)
    row = await _store(request, caller, consent, None, base)
    if row is None:  # pragma: no cover - a fresh uuid never conflicts
        return outcome(409, "conflict", "try again")
    await audit(request, "create", [patient_id])
    return fhir(
        row.body,
        201,
        headers={"Location": f"{base}/Consent/{row.id}/_history/1", "ETag": 'W/"1"'},
    )


@router.fhir_route("/Consent/{cid}", ["PUT"])
async def update_consent(request: Request) -> Response:
    """Replace a consent (e.g. status inactive to withdraw an objection)."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "u")
    _purpose(request, caller)
    cid = request.path_params["cid"]
    current = await _visible_row(request, caller, cid)
    consent = await _consent_body(request)
    if isinstance(consent, dict) and consent.get("id") != cid:
        raise InvalidRequest("the body's id must match the URL", "id")
    patient_id = await stored(request, _validated, request, caller, consent)
    await stored(request, _may_change, request, caller, current.patient_id)
    if patient_id != current.patient_id:
        raise UnprocessableResource("a consent cannot move to another patient", "patient")
    wanted = request.headers.get("if-match")
    if wanted is not None and wanted.strip().removeprefix("W/").strip('"') != str(current.version):
        return outcome(412, "conflict", f"Consent/{cid} is at version {current.version}")
    row = await _store(request, caller, consent, current, base)
    if row is None:
        return outcome(409, "conflict", f"Consent/{cid} was changed meanwhile; read it again")
    await audit(request, "update", [patient_id])
    return fhir(row.body, headers={"ETag": f'W/"{row.version}"'})


@router.fhir_route("/Consent/{cid}", ["DELETE"])
async def delete_consent(request: Request) -> Response:
    """Revoke a consent: it stops having any effect at once. Nothing is deleted: a new
    version with status ``inactive`` is stored, and the earlier ones stay in the history."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "d")
    _purpose(request, caller)
    cid = request.path_params["cid"]
    current = await _visible_row(request, caller, cid)
    await stored(request, _may_change, request, caller, current.patient_id)
    if current.status not in RETIRED:
        consent = {**orjson.loads(current.body), "status": "inactive"}
        if await _store(request, caller, consent, current, base) is None:
            return outcome(409, "conflict", f"Consent/{cid} was changed meanwhile; read it again")
    await audit(request, "delete", [current.patient_id])
    return Response(status_code=204)


@router.fhir_get("/Consent/{cid}")
async def read_consent(request: Request) -> Response:
    """One consent (its current version)."""
    _, caller, _ = await context(request)
    access.require(caller, "Consent", "r")
    _purpose(request, caller)
    row = await _visible_row(request, caller, request.path_params["cid"])
    await audit(request, "read", [row.patient_id])
    return fhir(row.body, headers={"ETag": f'W/"{row.version}"'})


@router.fhir_get("/Consent/{cid}/_history")
async def consent_history(request: Request) -> Response:
    """Every version of one consent, newest first (a ``history`` Bundle)."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "r")
    _purpose(request, caller)
    row = await _visible_row(request, caller, request.path_params["cid"])
    versions = await stored(request, request.app.state.consents.history, row.id)
    await audit(request, "history-instance", [row.patient_id])
    bundle: Json = {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(versions),
        "entry": [
            {
                "fullUrl": f"{base}/Consent/{v.id}",
                "resource": orjson.loads(v.body),
                "request": {"method": "POST" if v.version == 1 else "PUT", "url": "Consent"},
            }
            for v in versions
        ],
    }
    return fhir(bundle)


@router.fhir_get("/Consent/{cid}/_history/{vid}")
async def consent_version(request: Request) -> Response:
    """One version of one consent."""
    _, caller, _ = await context(request)
    access.require(caller, "Consent", "r")
    _purpose(request, caller)
    row = await _visible_row(request, caller, request.path_params["cid"])
    vid = request.path_params["vid"]
    versions = await stored(request, request.app.state.consents.history, row.id)
    found = next((v for v in versions if str(v.version) == vid), None)
    if found is None:
        raise NotFound(f"Consent/{row.id} has no version {vid}")
    await audit(request, "vread", [row.patient_id])
    return fhir(found.body, headers={"ETag": f'W/"{found.version}"'})


@router.fhir_get("/Consent")
async def search_consent(request: Request) -> Response:
    """A patient's consents (``patient`` is required). A patient the caller may not see
    answers as an unknown patient does: an empty searchset."""
    _, caller, base = await context(request)
    access.require(caller, "Consent", "s")
    _purpose(request, caller)
    patient = request.query_params.get("patient", "").removeprefix("Patient/")
    if not patient:
        raise InvalidRequest("Consent search needs the patient parameter", "patient")
    sees = await stored(request, _sees, request, caller, patient)
    rows = await stored(request, request.app.state.consents.for_patient, patient) if sees else []
    status = request.query_params.get("status")
    found = [orjson.loads(r.body) for r in rows if status is None or r.status == status]
    if sees:
        await audit(request, "search-type", [patient])
    else:
        await audit(request, "search-type", [patient], REFUSED, "no access to this consent")
    return fhir(searchset(base, found, total=len(found), links={"self": f"{base}/Consent"}))


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
    """The consent decision as a service (LEAP ``patient-consent-consult`` shape), for those
    who may know this patient's choices; to anyone else the patient is unknown."""
    record, caller, base = await context(request)
    access.require(caller, "Consent", "r")
    _purpose(request, caller)
    body = await json_body(request)
    ctx = body.get("context") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("hook") != "patient-consent-consult":
        raise InvalidRequest("hook must be patient-consent-consult, with a context")
    if not isinstance(ctx, dict):
        raise InvalidRequest("hook must be patient-consent-consult, with a context")
    pid = await stored(request, _consulted_patient, record, ctx)
    if pid is None or not await stored(request, _sees, request, caller, pid):
        raise await _unknown(request, pid, UNKNOWN_PATIENT)
    subject = _actor_for(ctx, caller)
    guard: Guard = request.app.state.guard

    def situation_of(pid: str) -> Situation:
        person = record.person(pid)
        return guard.situation(subject, pid, orjson.loads(person.patient) if person else None)

    situation = await stored(request, situation_of, pid)
    data: Json = ctx["data"] if isinstance(ctx.get("data"), dict) else {}
    labels: list[Any] = data["securityLabel"] if isinstance(data.get("securityLabel"), list) else []
    probe: Json = {
        "resourceType": str(data.get("class", "Basic")),
        "id": "-",
        "meta": {"security": [{"code": str(c)} for c in labels]},
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


def _consulted_patient(record: SharedRecord, ctx: Json) -> str | None:
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
    return None


def _actor_for(ctx: Json, caller: Principal) -> Any:
    """The actor asked about: the context's, else the caller (break-glass grants are the
    caller's own, so they count only when the caller asks about themselves)."""
    me = actor(caller)
    org, role = me.organisation, me.role
    for a in ctx.get("actor") or []:
        if not isinstance(a, dict):
            continue
        if a.get("system") == "https://fhir.nhs.uk/Id/ods-organization-code":
            org = str(a.get("value"))
        if str(a.get("system", "")).endswith("NHSDigital-SDS-JobRoleCode"):
            role = str(a.get("value"))
    purposes = ctx.get("purposeOfUse")
    purpose = purposes[0] if isinstance(purposes, list) and purposes else purposes or me.purpose
    identity = me.identity if (org, role) == (me.organisation, me.role) else ""
    return type(me)(me.subject, role, org, str(purpose), None, identity)


router.add_route("/cds-services", consult_discovery, methods=["GET"], include_in_schema=False)
router.add_route(
    "/cds-services/patient-consent-consult", consult, methods=["POST"], include_in_schema=False
)
