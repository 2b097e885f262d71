"""Whom a request concerned, for the audit trail: the person in the index.

A request can name a person many ways: the gateway id, a source's own
Patient id (``acute-RX0…``), one of their resources (``/{type}/{id}``), an
NHS number or local id in ``identifier``, PIXm's ``sourceIdentifier``,
``patient=``/``subject=``, or a body (break-glass ``Parameters``, a
``Consent``, a CDS Hooks consult). Refusals and failures must be filed under
that person as the privacy officer knows them, so every form is resolved
through the index to the person id; what the index does not
know is filed under no patient (the query itself is in the event).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from carelink.errors import CarelinkError
from carelink.federation import SharedRecord
from carelink.federation.patient_search import identifier_tests
from carelink.federation.read import is_shared, person_of
from carelink.fhir import NHS_NUMBER_SYSTEM
from carelink.sources.base import local_id_system
from carelink.storage import ConsentStore, Database, PersonQuery

Json = dict[str, Any]
#: at most this many people are resolved from one request's identifiers
MOST = 20


def person_for(record: SharedRecord, value: str) -> str | None:
    """The person id a patient reference names (gateway id or a source Patient id)."""
    pid = value.rsplit("Patient/", 1)[-1].strip()
    if not pid:
        return None
    if record.person(pid) is not None:
        return pid
    link = record.source_patient(pid)
    return link.person_id if link is not None else None


def people_with(record: SharedRecord, token: str) -> list[str]:
    """The people an identifier token (``system|value`` or a value) names."""
    systems = {local_id_system(s): s for s in record.fanout.sources}
    try:
        tests = identifier_tests(token, systems)
    except CarelinkError:
        return []
    if not tests:
        return []
    return [row.id for row in record.index.find(PersonQuery(identifiers=(tests,)), limit=MOST)]


def _from_body(record: SharedRecord, body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    found: list[str] = []
    for p in body.get("parameter") or ():  # Parameters: patient, identifier
        if isinstance(p, dict) and p.get("name") == "patient":
            ref = p.get("valueReference", {}).get("reference")
            found += [x for x in [person_for(record, str(ref))] if x] if ref else []
        if isinstance(p, dict) and p.get("name") == "identifier":
            ident = p.get("valueIdentifier") or {}
            system = ident.get("system") or NHS_NUMBER_SYSTEM
            found += people_with(record, f"{system}|{ident.get('value', '')}")
    patient = body.get("patient")  # a Consent
    if isinstance(patient, dict) and patient.get("reference"):
        found += [x for x in [person_for(record, str(patient["reference"]))] if x]
    context = body.get("context")  # a CDS Hooks consult
    ids = context.get("patientId") if isinstance(context, dict) else None
    for ident in ids if isinstance(ids, list) else [ids] if ids else []:
        if not isinstance(ident, dict):
            continue
        if ident.get("system") in (None, "Patient"):
            found += [x for x in [person_for(record, str(ident.get("value")))] if x]
        else:
            found += people_with(record, f"{ident.get('system')}|{ident.get('value', '')}")
    return found


def _from_path(request: Request, record: SharedRecord) -> list[str]:
    """A patient id in the path, or the patient of a Consent or break-glass review named there."""
    params = request.path_params
    found: list[str | None] = []
    if "pid" in params:
        found.append(person_for(record, str(params["pid"])))
    if "rid" in params and "rtype" in params and not is_shared(str(params["rtype"])):
        found.append(person_of(record, str(params["rtype"]), str(params["rid"])))
    consents: ConsentStore | None = getattr(request.app.state, "consents", None)
    if consents is not None and "cid" in params:
        row = consents.get(str(params["cid"]))
        found.append(row.patient_id if row else None)
    if consents is not None and "tid" in params:
        grant = consents.grant_by_id(str(params["tid"]))
        found.append(grant.patient_id if grant else None)
    return [x for x in found if x]


def _from_query(record: SharedRecord, request: Request) -> list[str]:
    q = request.query_params
    found: list[str] = []
    refs = q.getlist("patient") + q.getlist("subject")
    if request.url.path.endswith("/Patient"):
        refs += q.getlist("_id")
        for value in q.getlist("identifier"):
            for token in value.split(",")[:MOST]:
                found += people_with(record, token)
    for ref in [r for v in refs for r in v.split(",")][:MOST]:
        found += [x for x in [person_for(record, ref)] if x]
    for token in q.getlist("sourceIdentifier")[:MOST]:
        found += people_with(record, token)
    return found


async def subjects_of(request: Request, read_body: bool = False) -> list[str]:
    """The people a request named, as index person ids (none when it named nobody the
    index knows). ``read_body`` only where the body can still be read (the request object
    the route had). Never raises: a broken index must not stop the event being written."""
    record: SharedRecord | None = getattr(request.app.state, "record", None)
    if record is None:
        return []
    db: Database = request.app.state.db
    try:
        found: list[str] = await db.run(
            lambda: _from_path(request, record) + _from_query(record, request)
        )
        if read_body and request.method in ("POST", "PUT"):
            raw = await request.body()
            if raw:
                found += await db.run(_from_body, record, orjson.loads(raw))
        return list(dict.fromkeys(found))[:MOST]
    except Exception:
        return []
