"""FHIR Bulk Data Access ``$export`` for analysts' backend services.

Kick-off at system, ``Patient`` and ``Group/{id}`` level (groups:
``practice-<ODS>``, ``condition-<SNOMED CT>``) with ``Prefer: respond-async``
answers 202 with ``Content-Location``; polling answers 202 with
``X-Progress`` and ``Retry-After`` until the manifest (200); ``DELETE``
cancels (later polls: 404). Jobs and their files are bound to the full identity that asked (issuer,
subject, client id): status, files and cancel check that, and the scope and
purpose again, on every request.
Needs a backend-services token (``system/`` scopes; narrower scopes narrow
the export) and a secondary-use purpose of use.

The de-identification profile is the one the client's registration (its
data-sharing agreement, ``deid_profile``) names, so a standard Bulk Data
client that sends no carelink parameter gets what was agreed. A client may ask
for a less identifying profile than its agreement (``profile=anonymised`` under
a pseudonymised agreement), never a more identifying one (403). Only clients
registered here have an agreement: a backend token from another issuer gets
anonymised extracts. carelink parameters: ``profile``, ``k`` (the
k-anonymity threshold of an anonymised extract, default 5) and ``m`` (how many
facts of a person's care the stated intruder knows, default 2).
"""

from __future__ import annotations

import shutil
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from carelink.api import access
from carelink.api.deps import audit, context, router, stored
from carelink.api.responses import fhir
from carelink.auth import Principal
from carelink.auth.backend_services import deid_profile_for
from carelink.auth.local_issuer import LOCAL_ISSUER
from carelink.auth.scopes import parse_all
from carelink.consent import Policy
from carelink.errors import AccessDenied, InvalidRequest, NotFound
from carelink.export.jobs import JobRequest, Runner
from carelink.export.spec import Cohort, ExtractSpec, permitted, type_filters
from carelink.export.tables import ERRORS
from carelink.federation.query import SEARCH_TYPES
from carelink.fhir.search import parse_date
from carelink.storage import JobRow, JobStore

FORMATS = {
    "application/fhir+ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "ndjson": "ndjson",
    "application/vnd.apache.parquet": "parquet",
    "parquet": "parquet",
}
# MeasureReport: the aggregate tables of profile=aggregate
EXPORT_TYPES = frozenset({"Patient", "MeasureReport", *SEARCH_TYPES})
MEDIA = {"ndjson": "application/fhir+ndjson", "parquet": "application/vnd.apache.parquet"}


def _allowed(caller: Principal, policy: Policy) -> None:
    """A backend-services token (the client itself, no role, organisation or patient) with
    ``system/`` scopes and a secondary-use purpose: checked on every export route."""
    if not caller.backend or not any(s.context == "system" for s in parse_all(caller.scopes)):
        raise AccessDenied("$export needs a backend-services token with system/ scopes")
    if caller.purpose not in policy.source.secondaryUsePurposes:
        raise AccessDenied(
            f"purpose of use {caller.purpose or '(none)'} is not a secondary-use purpose "
            "this ICS allows for extracts"
        )


def _agreed_profile(request: Request, caller: Principal) -> str | None:
    """The profile the caller's registration agreed to; ``None`` for a caller with no
    registration here (a token from another issuer, or for an unregistered client)."""
    if caller.issuer != LOCAL_ISSUER or caller.client_id is None:
        return None
    registration = request.app.state.token_clients.get(caller.client_id)
    return registration.deid_profile if registration is not None else None


async def _kick_off(request: Request, group: str | None = None) -> Response:
    _, caller, base = await context(request)
    _allowed(caller, request.app.state.policy)
    # Resolved only once the caller is known: unknown groups say nothing to strangers.
    cohort = Cohort.from_group(group, request.app.state.pcns) if group else Cohort()
    if request.headers.get("prefer", "").replace(" ", "").lower().find("respond-async") < 0:
        raise InvalidRequest("$export needs the header Prefer: respond-async", "Prefer")
    q = request.query_params
    if request.method == "POST":
        raise InvalidRequest("send $export parameters in the query string (GET)")
    fmt = FORMATS.get(q.get("_outputFormat", "application/fhir+ndjson"))
    if fmt is None:
        raise InvalidRequest(
            "_outputFormat must be application/fhir+ndjson or parquet", "_outputFormat"
        )
    asked = {t.strip() for v in q.getlist("_type") for t in v.split(",") if t.strip()}
    unknown = asked - EXPORT_TYPES
    if unknown:
        raise InvalidRequest(f"_type {sorted(unknown)[0]} cannot be exported here", "_type")
    scoped = {t: f for t in EXPORT_TYPES if (f := access.system_filters(caller, t)) is not None}
    granted = set(scoped)
    if asked and not asked <= granted:
        raise AccessDenied(f"no scope allows export of {sorted(asked - granted)[0]}")
    wanted = type_filters(q.getlist("_typeFilter"))
    for t, scope_filters in scoped.items():
        if scope_filters:  # a granular scope narrows the export; it is never widened
            wanted[t] = [{**u, **f} for u in wanted.get(t, [{}]) for f in scope_filters]
    since = parse_date(q["_since"], "_since").range.start if "_since" in q else None
    try:
        k = int(q.get("k", "5"))
    except ValueError:
        raise InvalidRequest("k must be a whole number", "k") from None
    if k < 2:
        raise InvalidRequest("k must be at least 2", "k")
    try:
        m = int(q.get("m", "2"))
    except ValueError:
        raise InvalidRequest("m must be a whole number", "m") from None
    spec = ExtractSpec(
        project=caller.subject,
        profile=deid_profile_for(_agreed_profile(request, caller), q.get("profile")),
        types=frozenset(asked or granted),
        since=since,
        type_filters=wanted,
        cohort=cohort,
        k=k,
        m=m,
        purpose=str(caller.purpose),
    )
    spec.check()
    permitted(request.app.state.policy, spec)
    job_id = uuid.uuid4().hex
    jobs: JobStore = request.app.state.jobs
    # The request as the manifest states it: the public base, never the Host header.
    public = request.app.state.settings.public_base().rstrip("/")
    asked_path = request.url.path.split("/fhir", 1)[-1] if "/fhir" in request.url.path else ""
    query = f"?{request.url.query}" if request.url.query else ""
    job = JobRequest(spec, f"{public}{asked_path}{query}", fmt)
    await stored(request, jobs.create, job_id, caller.identity, job.to_bytes(), time.time())
    await audit(request, "operation", [])
    return Response(
        status_code=202, headers={"Content-Location": f"{base}/$export-status/{job_id}"}
    )


@router.fhir_route("/$export", ["GET", "POST"])
async def export_system(request: Request) -> Response:
    """System-level export: everyone in the index."""
    return await _kick_off(request)


@router.fhir_route("/Patient/$export", ["GET", "POST"])
async def export_patients(request: Request) -> Response:
    """Patient-level export: every patient (the compartment of each)."""
    return await _kick_off(request)


@router.fhir_route("/Group/{gid}/$export", ["GET", "POST"])
async def export_group(request: Request) -> Response:
    """Group-level export: a practice's or a PCN's patients, or people with a condition."""
    return await _kick_off(request, request.path_params["gid"])


async def _own_job(request: Request, caller: Principal, job_id: str) -> JobRow:
    """The caller's own job: bound to the full identity that asked (issuer, client id ...),
    and the caller must still be a backend service with export scope and purpose."""
    _allowed(caller, request.app.state.policy)
    job: JobRow | None = await stored(request, request.app.state.jobs.get, job_id)
    expired = job is not None and (
        job.status == "expired"
        or (
            job.status in ("complete", "error")
            and job.kept_from + request.app.state.export_ttl < time.time()
        )
    )
    owner = job is not None and job.client == caller.identity
    if job is None or not owner or job.status == "cancelled" or expired:
        raise NotFound("no such export job (unknown, someone else's, cancelled or expired)")
    return job


@router.fhir_get("/$export-status/{job}")
async def export_status(request: Request) -> Response:
    """Progress (202), the manifest (200), or the error (500 OperationOutcome)."""
    _, caller, base = await context(request)
    job = await _own_job(request, caller, request.path_params["job"])
    if job.status in ("accepted", "running"):
        return Response(
            status_code=202, headers={"X-Progress": job.progress[:100], "Retry-After": "1"}
        )
    body = orjson.loads(job.manifest or b"{}")
    if job.status == "error":
        return fhir(body["outcome"], 500)
    for item in [*body.get("output", []), *body.get("error", [])]:
        item["url"] = f"{base}/$export-file/{job.id}/{item['url']}"
    expires = formatdate(job.kept_from + request.app.state.export_ttl, usegmt=True)
    return Response(orjson.dumps(body), media_type="application/json", headers={"Expires": expires})


@router.fhir_route("/$export-status/{job}", ["DELETE"])
async def export_cancel(request: Request) -> Response:
    """Cancel a job and delete its files, answering once the job has stopped: then no
    source is asked anything more for it and none of its files remain (``Runner.stop``:
    at once here, or once the process holding it has let go, waited for at most
    ``STOP_WAIT`` seconds)."""
    _, caller, _ = await context(request)
    job = await _own_job(request, caller, request.path_params["job"])
    await stored(request, request.app.state.jobs.cancel, job.id)
    runner: Runner = request.app.state.runner
    await runner.stop(job.id)
    directory: Path = request.app.state.exports / job.id
    await run_in_threadpool(shutil.rmtree, directory, True)
    return Response(status_code=202)


@router.fhir_get("/$export-file/{job}/{name}")
async def export_file(request: Request) -> Response:
    """One output file, to the client that asked for it."""
    _, caller, _ = await context(request)
    job = await _own_job(request, caller, request.path_params["job"])
    name = request.path_params["name"]
    rtype, _, ext = name.partition(".")
    known = rtype in EXPORT_TYPES or name == ERRORS
    if job.status != "complete" or ext not in MEDIA or not known:
        raise NotFound("no such file")
    path: Path = request.app.state.exports / job.id / name
    if not await run_in_threadpool(path.is_file):
        raise NotFound("no such file")
    return FileResponse(path, media_type=MEDIA[ext])
