"""The HTTP edge of observability: request ids, the access line and request metrics.

A pure ASGI middleware, outermost, so it sees every answer: the app's, the
input bounds' refusals, the audit's fail-closed 503s, and a 500 for an
exception nothing handled (answered here, so that one carries its id too).

- ``X-Request-ID``: the caller's when well formed (``observability.context``),
  else a new UUID4; bound for the request (audit, outbound source requests and
  log lines read it) and returned on every response.
- One access line and the request metrics once the answer is complete, labelled
  by the route template (``/fhir/Patient/{pid}``), never the path as sent, which
  may hold an NHS number; a path no route matched is ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carelink.api.responses import outcome
from carelink.observability import HEADER, Telemetry, accept_request_id, bind, unbind

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
_HEADER = HEADER.lower().encode()


def route_of(scope: Scope) -> str:
    """The template of the route that served the request, or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Observe:
    """Request ids in and out, one access line and the metrics of each request."""

    def __init__(
        self, app: ASGIApp, telemetry: Telemetry, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        given = next((v for k, v in scope["headers"] if k == _HEADER), None)
        request_id = accept_request_id(given.decode("latin-1") if given is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        bound = bind(request_id)
        status = 500
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
                answered = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                headers.append((_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not answered:  # the server would answer 500 without our header: answer here
                await outcome(500, "exception", "internal error")(scope, receive, send_with_id)
            raise
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.telemetry.request(method, route_of(scope), status, self.clock() - started)
            unbind(bound)
