"""Bounded input, before any route runs: request headers and body size, and URLs
without control characters (400: FHIR strings hold none, PostgreSQL no NUL).

A pure ASGI middleware (no buffering by Starlette's machinery): headers over
``max_header_bytes`` in total are answered 431; a body whose
``Content-Length`` is over ``max_body_bytes`` is answered 413 unread, and a
chunked body is counted as it arrives and cut off with 413 the moment it
passes the limit. Either way no route sees it, so nothing is stored.
(The HTTP server bounds headers too: ``carelink serve`` sets h11's
incomplete-event limit, so a slow header flood is cut off before it is parsed.)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from carelink.api.bodies import CONTROL, CONTROL_MESSAGE
from carelink.errors import PayloadTooLarge
from carelink.fhir import dumps, error_outcome

#: a control character FHIR strings may not hold (``bodies.CONTROL``), percent-encoded
_CONTROL_IN_QUERY = re.compile(rb"%(0[0-8bBcCeEfF]|1[0-9a-fA-F])")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = dumps(error_outcome(code, message, None))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/fhir+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BoundedInput:
    """Refuse oversized headers (431) and bodies (413) before the app reads them."""

    def __init__(self, app: App, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _CONTROL_IN_QUERY.search(scope.get("query_string", b"")) or CONTROL.search(
            scope.get("path", "")
        ):
            await _refuse(send, 400, "invalid", f"{CONTROL_MESSAGE}: the URL holds one")
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        # one pass over the headers: their size, the first Content-Length, any chunking
        size = 0
        length: bytes | None = None
        chunked = False
        for k, v in headers:
            size += len(k) + len(v) + 4
            if k == b"content-length":
                if length is None:
                    length = v
            elif k == b"transfer-encoding":
                chunked = True
        if size > self.max_headers:
            await _refuse(send, 431, "too-costly", "the request headers are too large")
            return
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _refuse(send, 400, "invalid", "Content-Length is not a number")
                return
            if declared > self.max_body:
                await _refuse(send, 413, "too-costly", self._message())
                return
        elif not chunked:
            # neither length nor chunks: the request has no body (HTTP/1.1, RFC 9112 6.3),
            # nothing to count (most requests: a GET)
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # the app's error handlers answer 413 for it (the route is mid-read)
                    raise PayloadTooLarge(self._message())
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except PayloadTooLarge:
            if not started:
                await _refuse(send, 413, "too-costly", self._message())

    def _message(self) -> str:
        return f"the request body is over the limit of {self.max_body} bytes"
