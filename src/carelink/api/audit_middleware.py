"""The safety net: every request leaves an audit event, whatever happened to it.

Routes write their own events (``deps.audit``), filed under the people they
served. A request that ends without one — a route that writes none (export
status, file download, cancel ...), an error answered by a handler, an
unknown path, an unexpected exception (500) — gets one from these steps, which
the gateway's one front layer (``api.front``) runs before its answer starts:
outcome 0 below 400, 4 (refused) for other 4xx, 8 (failed) for 5xx, filed under
whoever the request named (``audit_subject``). If that event cannot be
written, an answer that would have carried data is replaced by a 503, as
everywhere else.

Only the public discovery documents and the operator probes are left out
(``PUBLIC``): they carry nobody's data and every client, health check and
metrics scraper polls them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from carelink.api.audit_subject import subjects_of
from carelink.api.deps import audit
from carelink.api.dispatch import Routes, route_path
from carelink.api.responses import RETRY_AFTER
from carelink.api.responses import outcome as outcome_response
from carelink.audit.events import FAILED, REFUSED, SUCCESS
from carelink.errors import AuditError

PUBLIC = frozenset(
    {
        "/fhir/metadata",
        "/.well-known/smart-configuration",
        "/openapi.json",
        "/livez",
        "/readyz",
        "/metrics",
    }
)


def interaction(request: Request) -> str:
    """The BALP (FHIR restful-interaction) code for a request."""
    method, path = request.method, request.url.path
    if "$" in path:
        return "operation"
    if method in ("POST", "PUT", "DELETE"):
        return {"POST": "create", "PUT": "update", "DELETE": "delete"}[method]
    params = request.path_params
    if "rtype" in params:  # /{type}/{id} reads; /Patient/{id}/{type} searches
        return "read" if "rid" in params else "search-type"
    has_id = any(k in params for k in ("pid", "cid", "tid", "job"))
    return "read" if has_id else "search-type"


def _outcome(status: int) -> str:
    return SUCCESS if status < 400 else REFUSED if status < 500 else FAILED


def reason(status: int) -> str | None:
    """The audit event's reason for an answer the routes did not audit."""
    return None if status < 400 else f"HTTP {status}"


def blocked(exc: AuditError) -> Response:
    """The 503 that replaces an answer whose audit event could not be written."""
    answer = outcome_response(503, "transient", str(exc))
    answer.headers["Retry-After"] = RETRY_AFTER
    return answer


async def record(scope: Scope, routes: Routes, status: int, why: str | None) -> None:
    """The safety net's event for a request that wrote none, under whoever it named."""
    if "path_params" not in scope:  # never routed: its route's parameters, if any
        hit = routes.match(scope["method"], route_path(scope))
        if hit is not None:
            scope = {**scope, "path_params": hit[1]}  # the request's state is shared
    request = Request(scope)
    who = await subjects_of(request)
    await audit(request, interaction(request), who, _outcome(status), why)
