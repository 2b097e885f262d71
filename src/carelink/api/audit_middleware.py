"""The safety net: every request leaves an audit event, whatever happened to it.

Routes write their own events (``deps.audit``), filed under the people they
served. A request that ends without one — a route that writes none (export
status, file download, cancel ...), an error answered by a handler, an
unknown path, an unexpected exception (500) — gets one here, before its
answer starts: outcome 0 below 400, 4 (refused) for other 4xx, 8 (failed)
for 5xx, filed under whoever the request named (``audit_subject``). If that
event cannot be written, an answer that would have carried data is replaced
by a 503, as everywhere else.

Only the public discovery documents and the operator probes are left out
(``PUBLIC``): they carry nobody's data and every client, health check and
metrics scraper polls them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class AuditEveryRequest:
    """Pure ASGI middleware (no response buffering; streaming answers stream).

    ``routes`` are the app's: a request refused before it was routed (a control
    character in its URL, oversized headers or body: ``limits.BoundedInput``) is filed
    as its route would have seen it, under the person its path names and as the
    interaction it was (a read of ``/Patient/{id}``, not a search)."""

    def __init__(self, app: ASGIApp, routes: Iterable[Any] = ()) -> None:
        self.app = app
        self.routes = Routes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        replaced = False

        async def send_audited(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's answer was swapped for a 503: drop the rest of it
            if message["type"] == "http.response.start" and not state.get("audited"):
                status = int(message["status"])
                try:
                    await self._write(scope, status, None if status < 400 else f"HTTP {status}")
                except AuditError as exc:
                    if status < 400:  # it would carry data: fail closed instead
                        replaced = True
                        blocked = outcome_response(503, "transient", str(exc))
                        blocked.headers["Retry-After"] = RETRY_AFTER
                        await blocked(scope, receive, send)
                        return
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception as exc:
            if not state.get("audited"):
                # the 500 carries no data: if even this cannot be written, it stands as it is
                with contextlib.suppress(AuditError):
                    await self._write(scope, 500, f"internal error ({type(exc).__name__})")
            raise

    async def _write(self, scope: Scope, status: int, reason: str | None) -> None:
        if "path_params" not in scope:  # never routed: its route's parameters, if any
            hit = self.routes.match(scope["method"], route_path(scope))
            if hit is not None:
                scope = {**scope, "path_params": hit[1]}  # the request's state is shared
        request = Request(scope)
        who = await subjects_of(request)
        await audit(request, interaction(request), who, _outcome(status), reason)
