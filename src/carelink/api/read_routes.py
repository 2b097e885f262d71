"""Read any resource the gateway returns by its id, and compartment search.

- ``GET /{type}/{id}``: every ``fullUrl`` and reference the gateway hands out
  can be followed. Patient data goes through the same scope, compartment,
  consent and audit checks as a search; a resource consent withholds is a
  404 exactly like an unknown one (no existence oracle), audited as refused.
  Shared resources (Practitioner, Organization ...) are not patient data:
  scopes apply, patient consent does not.
- ``GET /Patient/{id}/{type}``: the same as ``GET /{type}?patient={id}``.

Registered after every other FHIR route (see ``carelink.api``), so
``/Patient/{id}`` and ``/Patient/{id}/$everything`` keep their own endpoints.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from carelink.api import access
from carelink.api import params as P
from carelink.api.deps import audit, consented_person, context, looked_up, router
from carelink.api.fhir_routes import search_type
from carelink.api.responses import fhir, not_modified, outcome
from carelink.audit.events import REFUSED
from carelink.auth import Principal
from carelink.consent import Guard
from carelink.errors import NotFound, SourceError, SourceTimeout
from carelink.federation import SharedRecord
from carelink.federation.read import is_shared, locate, person_of, read_shared
from carelink.fhir import dumps

TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
WITHHELD = "withheld by consent"


def _unknown(rtype: str, rid: str) -> NotFound:
    return NotFound(f"{rtype}/{rid} is not known")


@router.fhir_get("/{rtype}/{rid}")
async def read(request: Request) -> Response:
    """One resource by type and id."""
    record, caller, _ = await context(request)
    rtype, rid = request.path_params["rtype"], request.path_params["rid"]
    P.check_format(request)
    if not TYPE_NAME.fullmatch(rtype):
        raise NotFound(f"Resource type '{rtype}' is not supported")
    access.require(caller, rtype, "r")
    if is_shared(rtype):
        return await _read_shared(request, record, caller, rtype, rid)
    person_id = await looked_up(request, person_of, record, rtype, rid)
    if person_id is None or not access.reaches(caller, person_id):
        raise _unknown(rtype, rid)  # never handed out, or another patient's for this token
    situation, person = await consented_person(
        request, caller, person_id, "read", f"{rtype}/{rid} is not known"
    )
    guard: Guard = request.app.state.guard
    found = await locate(record, person, rtype, rid, P.prefer(request).wait)
    if found is None:
        raise _unknown(rtype, rid)
    if rtype == "Provenance":
        visible = access.visible(caller, found.federated.resources)
        seen = await looked_up(request, guard.filter, situation, visible, limit=None)
        shown = access.provenance_for(caller, [found.resource], seen.resources)
        break_glass = seen.break_glass
    else:
        visible = access.visible(caller, [found.resource])
        allowed = await looked_up(request, guard.filter, situation, visible, limit=None)
        shown, break_glass = allowed.resources, allowed.break_glass
    if not shown:
        await audit(request, "read", [person.id], REFUSED, WITHHELD)
        raise _unknown(rtype, rid)
    request.state.break_glass = break_glass
    await audit(request, "read", [person.id])
    return _answer(request, shown[0])


async def _read_shared(
    request: Request, record: SharedRecord, caller: Principal, rtype: str, rid: str
) -> Response:
    try:
        resource = await read_shared(record, rtype, rid)
    except SourceTimeout as exc:
        return outcome(504, "timeout", f"source {exc.source} did not answer in time")
    except SourceError as exc:
        return outcome(502, "transient", f"source {exc.source} could not answer")
    if resource is None or not access.visible(caller, [resource]):
        raise _unknown(rtype, rid)
    await audit(request, "read", [])
    return _answer(request, resource)


def _answer(request: Request, resource: dict[str, object]) -> Response:
    body = dumps(resource)
    etag = f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return fhir(body, headers={"ETag": etag})


@router.fhir_get("/Patient/{pid}/{rtype}")
async def compartment_search(request: Request) -> Response:
    """``GET /Patient/{id}/{type}?...``: the type's search with ``patient={id}``."""
    pid, rtype = request.path_params["pid"], request.path_params["rtype"]
    if rtype.startswith("$"):
        raise NotFound(f"Operation '{rtype}' is not supported on Patient")
    query = [
        (k, v) for k, v in request.query_params.multi_items() if k not in ("patient", "subject")
    ]
    query.append(("patient", pid))
    scope = dict(request.scope)
    scope["query_string"] = urlencode(query).encode("latin-1")
    scope["path_params"] = {"rtype": rtype}
    return await search_type(Request(scope, request.receive))
