"""``GET /fhir/AuditEvent?patient=…``: who looked at a record.

Privacy officers (R0001) and Caldicott Guardians (R5105) may read any
patient's trail; a citizen's token reads its own patient's; nobody else.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response

from carelink.api import params as P
from carelink.api.deps import context, router
from carelink.api.responses import fhir
from carelink.audit.trail import GroupCommit
from carelink.errors import AccessDenied, InvalidRequest
from carelink.fhir import searchset

OVERSIGHT_ROLES = frozenset({"R0001", "R5105"})


@router.fhir_get("/AuditEvent")
async def audit_events(request: Request) -> Response:
    """The audit trail of one patient, newest first."""
    _, caller, base = await context(request)
    P.check_format(request)
    patient = request.query_params.get("patient", "").removeprefix("Patient/")
    if not patient:
        raise InvalidRequest("AuditEvent search needs the patient parameter", "patient")
    if caller.patient is not None:
        if caller.patient != patient:
            raise AccessDenied("a citizen may see only who accessed their own record")
    elif caller.role not in OVERSIGHT_ROLES:
        raise AccessDenied("only a privacy officer or Caldicott Guardian may read audit events")
    trail: GroupCommit = request.app.state.audit
    events = [orjson.loads(e) for e in trail.trail.store.for_patient(patient)]
    url = f"{base}/AuditEvent?patient={patient}"
    return fhir(searchset(base, events, total=len(events), links={"self": url}))
