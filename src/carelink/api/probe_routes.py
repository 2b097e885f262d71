"""Operator endpoints outside the FHIR base: liveness, readiness and metrics.

- ``GET /livez``: the process is up and serving (200, always; touches nothing).
- ``GET /readyz``: 200 when the database answers a trivial query within a second,
  else 503 with an OperationOutcome and ``Retry-After`` (a load balancer stops
  sending requests here meanwhile).
- ``GET /metrics``: Prometheus text. Counts and latencies labelled by route
  template, source, outcome and state only: no patient data. Open unless
  ``CARELINK_METRICS_TOKEN`` is set, then ``Authorization: Bearer <token>`` is
  required; either way, scrape it on a network the gateway's clients cannot reach.

None of them needs a SMART token or writes an audit event (they carry nobody's data,
and probes poll them every few seconds).
"""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.responses import Response

from carelink.api.deps import router, stored
from carelink.api.responses import outcome
from carelink.observability import CONTENT_TYPE, LiveCounts, Readiness, exposition
from carelink.storage.health import JOB_STATES, Health

#: seconds a client of /readyz is told to wait before asking again
RETRY_AFTER = 5
PROBES = ("/livez", "/readyz", "/metrics")


async def livez(request: Request) -> Response:
    """The process is up."""
    return Response(b"ok\n", media_type="text/plain")


async def readyz(request: Request) -> Response:
    """The database answers: 200, else 503 with ``Retry-After``."""
    readiness: Readiness = request.app.state.readiness
    if await readiness.ready():
        return Response(b"ready\n", media_type="text/plain")
    refused = outcome(503, "transient", "the database does not answer")
    refused.headers["Retry-After"] = str(RETRY_AFTER)
    return refused


async def metrics(request: Request) -> Response:
    """The Prometheus exposition."""
    token: str | None = request.app.state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            refused = outcome(401, "login", "a metrics token is required")
            refused.headers["WWW-Authenticate"] = 'Bearer realm="carelink-metrics"'
            return refused
    health: Health = request.app.state.health
    jobs = LiveCounts(
        "carelink_export_jobs", "Export jobs by state", "state", health.jobs_by_state, JOB_STATES
    )
    text = await stored(request, exposition, request.app.state.telemetry.metrics, [jobs])
    return Response(text, media_type=CONTENT_TYPE)


for path, endpoint in zip(PROBES, (livez, readyz, metrics), strict=True):
    router.add_route(path, endpoint, methods=["GET"], include_in_schema=False)
