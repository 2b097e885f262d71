"""The gateway's one ASGI layer in front of its routes: every HTTP request enters here.

It runs, in one call and with two wrappers of ``send`` (the id on the answer; the
audit safety net), what were four middlewares,
in their order, outermost first:

1. observability (``observe``): the request id in and out, a 500 for an exception
   nothing handled (carrying its id), the access line and metrics;
2. the audit safety net (``audit_middleware``): a request that wrote no AuditEvent
   gets one before its answer starts; an answer that would carry data is replaced by
   a 503 if that event cannot be written (fail closed);
3. the input bounds (``limits``): control characters in the URL, header and body
   sizes, refused before any route runs (and audited as the route would have been);
4. the dispatch (``dispatch``): a request that fully matches a gateway route goes
   straight to its endpoint; anything else to the framework (``app``).

Each layer was a call level on every resumption of every request and a closure
around ``send``; here they are steps of one coroutine (benchmarks/README.md,
"Fewer layers per request").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request

from carelink.api.audit_middleware import PUBLIC, blocked, reason, record
from carelink.api.dispatch import App, Dispatch, Message, Receive, Scope, Send, route_path
from carelink.api.limits import body_message, counted, judge, refuse
from carelink.api.observe import logged, request_id, route_of, templates, with_id
from carelink.api.responses import outcome
from carelink.errors import AuditError, PayloadTooLarge
from carelink.observability import Telemetry, bind, unbind


class Front:
    """Observe, audit, bound and dispatch each HTTP request (see the module's text);
    other scopes (the lifespan) go to ``app`` untouched."""

    def __init__(
        self,
        app: App,
        telemetry: Telemetry,
        routes: Iterable[Any],
        max_body_bytes: int,
        max_header_bytes: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        routes = list(routes)
        self.app = app
        self.telemetry = telemetry
        self.templates = templates(routes)
        self.dispatch = Dispatch(routes)
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        rid = request_id(scope)
        value = rid.encode()
        bound = bind(rid)
        state: dict[str, Any] = scope["state"]
        net = scope["path"] not in PUBLIC  # the safety net's requests
        status = 500
        answered = False  # an answer's start went to the server
        began = False  # the app started an answer (the 503 may have replaced it)
        replaced = False

        async def out(message: Message) -> None:  # observability: the id on every answer
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
                answered = True
                message = with_id(message, value)
            await send(message)

        async def sending(message: Message) -> None:
            nonlocal began, replaced
            if message["type"] == "http.response.start":
                began = True
                if net and not replaced and not state.get("audited"):
                    code = int(message["status"])
                    try:
                        await record(scope, self.dispatch.routes, code, reason(code))
                    except AuditError as exc:
                        if code < 400:  # it would carry data: fail closed instead
                            replaced = True
                            await blocked(exc)(scope, receive, out)
                            return
            if not replaced:
                await out(message)  # else the app's answer was swapped for a 503: dropped

        try:
            try:
                verdict = judge(scope, self.max_body, self.max_headers)
                if isinstance(verdict, tuple):
                    await refuse(sending, *verdict)
                    return
                if verdict:
                    receive = counted(receive, self.max_body)
                try:
                    hit = self.dispatch.match(scope["method"], route_path(scope))
                    if hit is None:
                        await self.app(scope, receive, sending)
                        return
                    route, scope["path_params"] = hit
                    scope["endpoint"] = route.endpoint
                    request = Request(scope, receive, sending)
                    try:
                        response = await route.endpoint(request)
                        await response(scope, receive, sending)
                    except Exception as exc:
                        handler = None if began else self.dispatch.handler(scope, exc)
                        if handler is None:
                            raise
                        answer = await handler(request, exc)
                        await answer(scope, receive, sending)
                except PayloadTooLarge:
                    if not verdict:  # not the bounds' count: the app's own
                        raise
                    if not began:  # else the answer is under way: it stands, cut short
                        await refuse(sending, 413, "too-costly", body_message(self.max_body))
            except Exception as exc:
                if net and not state.get("audited"):
                    # the 500 carries no data: if even this cannot be written, it stands
                    with contextlib.suppress(AuditError):
                        why = f"internal error ({type(exc).__name__})"
                        await record(scope, self.dispatch.routes, 500, why)
                raise
        except Exception:
            if not answered:  # the server would answer 500 without our header: answer here
                await outcome(500, "exception", "internal error")(scope, receive, out)
            raise
        finally:
            template = route_of(scope, self.templates)
            logged(self.telemetry, scope, template, status, self.clock() - started)
            unbind(bound)
