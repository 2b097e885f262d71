"""The gateway's one ASGI layer in front of its routes: every HTTP request enters here.

It runs, in one call, what were four middlewares, in their order, outermost first:

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
"Fewer layers per request"), and an exception goes through the outer steps' parts
in the same order, one after the other (``Front._failed``). What a request has sent
so far, and the two wrappers of ``send`` (the id on every answer; the safety net
before the app's answer starts) are its ``Exchange``. A route's ``Answer`` (the FHIR
JSON of the lookup, ``$everything`` and every OperationOutcome) that its route
audited is sent by the exchange itself, with the id, without either wrapper.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from carelink.api.audit_middleware import PUBLIC, blocked, reason, record
from carelink.api.dispatch import App, Dispatch, Message, Receive, Routes, Scope, Send, route_path
from carelink.api.limits import body_message, counted, judge, refuse
from carelink.api.observe import id_headers, logged, request_id, route_of, templates
from carelink.api.responses import Answer, outcome
from carelink.audit.trail import Serving
from carelink.errors import AuditError, PayloadTooLarge
from carelink.observability import Telemetry, bind, unbind


class Exchange:
    """One HTTP request's answer as it goes out: its status and what was sent so far,
    and the two wrappers of ``send`` the steps hand on: ``out`` (observability: the id
    on every answer) and ``sending`` (the audit safety net, then ``out``)."""

    __slots__ = (
        "answered",
        "began",
        "counted",
        "net",
        "receive",
        "replaced",
        "routes",
        "scope",
        "send",
        "status",
        "value",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, value: bytes, routes: Routes
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.value = value  # the request id, as the header carries it
        self.routes = routes
        self.net = scope["path"] not in PUBLIC  # the safety net's requests
        self.status = 500
        self.answered = False  # an answer's start went to the server
        self.began = False  # the app started an answer (the 503 may have replaced it)
        self.replaced = False
        self.counted = False  # the body is counted as it arrives (the bounds' verdict)

    async def out(self, message: Message) -> None:
        """``send``, with the request's id on the answer's start."""
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.answered = True
            message = {**message, "headers": id_headers(message.get("headers", []), self.value)}
        await self.send(message)

    async def sending(self, message: Message) -> None:
        """``out``, once the safety net has audited an answer its request did not (and
        replaced it by a 503 when that event could not be written and it would carry
        data)."""
        if message["type"] == "http.response.start":
            self.began = True
            if self.net and not self.replaced and not self.scope["state"].get("audited"):
                code = int(message["status"])
                try:
                    await record(self.scope, self.routes, code, reason(code))
                except AuditError as exc:
                    if code < 400:  # it would carry data: fail closed instead
                        self.replaced = True
                        await blocked(exc)(self.scope, self.receive, self.out)
                        return
        if not self.replaced:
            await self.out(message)  # else the app's answer was swapped for a 503: dropped

    async def respond(self, response: Response, receive: Receive) -> None:
        """Send a route's (or a handler's) response through the steps: an ``Answer`` whose
        request the route audited (or the net leaves alone) goes straight out, its two
        messages with the id, as ``sending`` and ``out`` would pass them on."""
        if type(response) is not Answer or (self.net and not self.scope["state"].get("audited")):
            await response(self.scope, receive, self.sending)
            return
        self.began = self.answered = True
        self.status = response.status_code
        await self.send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": id_headers(response.raw_headers, self.value),
            }
        )
        await self.send({"type": "http.response.body", "body": response.body})


#: Starlette's ``Request`` made without its constructor (``request_for``)
_new = object.__new__


def request_for(scope: Scope, receive: Receive, send: Send) -> Request:
    """``Request(scope, receive, send)``, its attributes set at once rather than through
    the two constructors (and their checks of a scope the dispatch matched as HTTP):
    ``tests/api/test_front.py`` holds the two to the same attributes."""
    request: Request = _new(Request)
    request.__dict__.update(
        scope=scope,
        _receive=receive,
        _send=send,
        _stream_consumed=False,
        _is_disconnected=False,
        _form=None,
    )
    return request


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
        serving: Serving | None = None,
    ) -> None:
        routes = list(routes)
        self.app = app
        self.telemetry = telemetry
        self.templates = templates(routes)
        self.dispatch = Dispatch(routes)
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.clock = clock
        #: the requests in flight, counted for the audit's gathering window
        self.serving = serving if serving is not None else Serving()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        serving = self.serving
        serving.now += 1
        rid = request_id(scope)
        bound = bind(rid)
        x = Exchange(scope, receive, send, rid.encode(), self.dispatch.routes)
        request: Request | None = None  # once the dispatch has sent it to its endpoint
        try:
            verdict = judge(scope, self.max_body, self.max_headers)
            if isinstance(verdict, tuple):
                await refuse(x.sending, *verdict)
                return
            if verdict:
                receive = counted(receive, self.max_body)
                x.counted = True
            hit = self.dispatch.match(scope["method"], route_path(scope))
            if hit is None:
                await self.app(scope, receive, x.sending)
                return
            route, scope["path_params"] = hit
            scope["endpoint"] = route.endpoint
            request = request_for(scope, receive, x.sending)
            await x.respond(await route.endpoint(request), receive)
        except Exception as exc:
            await self._failed(x, exc, request)
        finally:
            serving.now -= 1
            template = route_of(scope, self.templates)
            logged(self.telemetry, scope, template, x.status, self.clock() - started)
            unbind(bound)

    async def _failed(self, x: Exchange, exc: Exception, request: Request | None) -> None:
        """What the steps do with an exception, innermost first, each step's failure
        going on to the next: the app's handler for one the endpoint raised before its
        answer began; the bounds' 413 for a body counted past the limit (none once the
        answer is under way: it stands, cut short); else the safety net's event for a
        500 and the 500 (carrying the id), and the exception goes on to the server."""
        scope = x.scope
        handler = None if request is None or x.began else self.dispatch.handler(scope, exc)
        if handler is not None and request is not None:
            try:
                await x.respond(await handler(request, exc), request.receive)
                return
            except Exception as failed:
                exc = failed
        if isinstance(exc, PayloadTooLarge) and x.counted:  # not the bounds' count: the app's
            try:
                if not x.began:
                    await refuse(x.sending, 413, "too-costly", body_message(self.max_body))
                return
            except Exception as failed:
                exc = failed
        try:
            if x.net and not scope["state"].get("audited"):
                # the 500 carries no data: if even this cannot be written, it stands
                with contextlib.suppress(AuditError):
                    why = f"internal error ({type(exc).__name__})"
                    await record(scope, x.routes, 500, why)
        finally:
            if not x.answered:  # the server would answer 500 without our header: answer here
                await outcome(500, "exception", "internal error")(scope, x.receive, x.out)
        raise exc
