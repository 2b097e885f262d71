"""What every simulator shares: latency, fault injection and an admin endpoint.

Latency is log-normal around a median (real services have a long right
tail, not a constant delay). Faults are drawn per request: an HTTP 500, a
hang (no answer for ``hang_seconds``), a malformed payload, or the whole
service down (503 to everything, or the process not running at all).
Tests change faults at run time with ``POST /_admin/faults``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from email.utils import formatdate
from typing import Any

import orjson
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

FAULT_FIELDS = ("error_rate", "hang_rate", "malformed_rate", "down")


@dataclass
class Behaviour:
    """How a simulator misbehaves; mutable at run time through the admin endpoint."""

    latency_ms: float = 0.0  # median
    latency_sigma: float = 0.25  # log-normal shape: p99 ~ median * e^(2.33 sigma)
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    malformed_rate: float = 0.0
    down: bool = False
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self) -> float:
        """Seconds to wait before answering this request."""
        if self.latency_ms <= 0:
            return 0.0
        return self.rng.lognormvariate(math.log(self.latency_ms / 1000.0), self.latency_sigma)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-able values."""
        out = asdict(self)
        out.pop("rng")
        return out


Handler = Callable[[Request], Awaitable[Response]]

MALFORMED = b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": '
#: in a request's scope: its latency and fault were drawn before its route was reached
BEHAVED = "carelink.simulator.behaved"


class ResponseCache:
    """Rendered answers by request: the population never changes while a simulator runs,
    so the same question gets the same bytes without rendering them again."""

    def __init__(self, maxsize: int = 2048) -> None:
        self.maxsize = maxsize
        self.items: OrderedDict[tuple[str, str, bytes, bytes], Response] = OrderedDict()

    async def answer(self, request: Request, handler: Handler) -> Response:
        body = await request.body() if request.method == "POST" else b""
        key = _key(request.scope, body)
        hit = self.items.get(key)
        if hit is None:
            hit = await handler(request)
            if hit.status_code == 200:
                self.items[key] = hit
                if len(self.items) > self.maxsize:
                    self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return _fresh(hit)

    def kept(self, scope: Scope) -> Response | None:
        """The answer kept for this ``GET``, if there is one (no body to read)."""
        key = _key(scope, b"")
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
        return hit


def _key(scope: Scope, body: bytes) -> tuple[str, str, bytes, bytes]:
    return (scope["method"], scope["path"], scope["query_string"], body)


def _fresh(cached: Response) -> Response:
    headers = {
        k: v
        for k, v in cached.headers.items()
        if k.lower() not in ("content-length", "content-type", "last-modified")
    }
    headers["Last-Modified"] = http_now()
    return Response(
        cached.body, status_code=cached.status_code, headers=headers, media_type=cached.media_type
    )


async def misbehave(behaviour: Behaviour, malformed: bytes = MALFORMED) -> Response | None:
    """This request's latency and fault: after the wait, the fault's answer (down, an
    error, a malformed payload), or None to answer normally."""
    b = behaviour
    if b.down:
        return Response(b"service unavailable", status_code=503)
    roll = b.rng.random()
    if roll < b.hang_rate:
        await asyncio.sleep(b.hang_seconds)
    delay = b.delay()
    if delay:
        await asyncio.sleep(delay)
    roll = b.rng.random()
    if roll < b.error_rate:
        return Response(b"internal error", status_code=500)
    if roll < b.error_rate + b.malformed_rate:
        return Response(malformed, media_type="application/json")
    return None


def with_behaviour(
    behaviour: Behaviour,
    handler: Handler,
    malformed: bytes = MALFORMED,
    cache: ResponseCache | None = None,
) -> Handler:
    """Wrap a route handler with latency, fault injection and (optionally) a response cache."""

    async def wrapped(request: Request) -> Response:
        # unless ``KeptFirst`` drew this request's latency and fault already
        if not request.scope.pop(BEHAVED, False):
            fault = await misbehave(behaviour, malformed)
            if fault is not None:
                return fault
        if cache is not None:
            return await cache.answer(request, handler)
        return await handler(request)

    return wrapped


class KeptFirst:
    """ASGI middleware: a ``GET`` whose answer a route's ``ResponseCache`` keeps is
    answered here, with that route's latency and faults (``misbehave``: the same draws
    from the same ``Behaviour``, in the same order), the kept bytes and headers and a
    fresh ``Last-Modified``, as ``with_behaviour`` answers it, without the framework's
    routing, request and response objects. Anything else goes on to ``app``."""

    def __init__(
        self, app: ASGIApp, behaviour: Behaviour, kept: Sequence[tuple[ResponseCache, bytes]]
    ) -> None:
        self.app = app
        self.behaviour = behaviour
        self.kept = tuple(kept)  # each cache with its route's malformed payload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for cache, malformed in self.kept:
                if cache.kept(scope) is None:
                    continue
                fault = await misbehave(self.behaviour, malformed)
                if fault is not None:
                    await fault(scope, receive, send)
                    return
                hit = cache.kept(scope)  # a change during the wait clears what was kept
                if hit is not None:
                    await _send_fresh(hit, send)
                    return
                scope[BEHAVED] = True  # the route renders it afresh, drawing nothing more
                break
        await self.app(scope, receive, send)


RawHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class PostsFirst:
    """ASGI middleware: a ``POST`` to one of ``posts``' paths is answered by its raw
    handler, after that request's latency and fault (``misbehave``, as ``with_behaviour``
    draws them), without the framework's routing, request and response objects; the
    handler reads the headers from the scope and the body from ``receive`` itself.
    Anything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, behaviour: Behaviour, posts: dict[str, RawHandler]) -> None:
        self.app = app
        self.behaviour = behaviour
        self.posts = posts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.posts.get(scope["path"])
            if handler is not None:
                fault = await misbehave(self.behaviour)
                if fault is not None:
                    await fault(scope, receive, send)
                    return
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


def kept_first(
    behaviour: Behaviour, cache: ResponseCache, malformed: bytes = MALFORMED
) -> Middleware:
    """``KeptFirst`` for one cached route, as a simulator's middleware."""
    return Middleware(KeptFirst, behaviour=behaviour, kept=[(cache, malformed)])


_NOT_KEPT = (b"content-length", b"content-type", b"last-modified")


async def _send_fresh(cached: Response, send: Send) -> None:
    """``_fresh(cached)`` sent: its headers in the order that response has them."""
    raw = cached.raw_headers
    headers = [h for h in raw if h[0] not in _NOT_KEPT]
    headers.append((b"last-modified", http_now().encode("latin-1")))
    headers += [h for h in raw if h[0] in _NOT_KEPT[:2]]
    await send({"type": "http.response.start", "status": cached.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": cached.body})


def unless_down(behaviour: Behaviour, handler: Handler) -> Handler:
    """Answer with ``handler`` while the simulator is up, 503 while it is down; no other
    fault is injected (a server's self-description is static, and asking it must not
    change the sequence of faults the other routes inject)."""

    async def wrapped(request: Request) -> Response:
        if behaviour.down:
            return Response(b"service unavailable", status_code=503)
        return await handler(request)

    return wrapped


def admin_routes(behaviour: Behaviour) -> list[Route]:
    """``GET``/``POST /_admin/faults``: read or change the behaviour of a running simulator."""

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            changes = orjson.loads(await request.body())
            allowed = {"latency_ms", "latency_sigma", "hang_seconds", *FAULT_FIELDS}
            unknown = set(changes) - allowed
            if unknown:
                return Response(f"unknown fields {sorted(unknown)}".encode(), status_code=400)
            new = replace(behaviour, **changes)
            for name in allowed:
                setattr(behaviour, name, getattr(new, name))
        return Response(orjson.dumps(behaviour.public()), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return [
        Route("/_admin/faults", faults, methods=["GET", "POST"]),
        Route("/_admin/health", health),
    ]


class HeaderMap(dict[str, str]):
    """A request's headers by lower-case name, each its first value (as Starlette's
    ``Headers.get`` reads them), looked up by any case of the name; made once a request
    from the ASGI scope instead of scanning the raw list on every look-up."""

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        super().__init__((k.decode("latin-1"), v.decode("latin-1")) for k, v in reversed(raw))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


_now: list[Any] = [None, ""]


def http_now() -> str:
    """The time now as an HTTP date (``Last-Modified``), made once a second."""
    second = int(time.time())
    if second != _now[0]:
        _now[0], _now[1] = second, formatdate(second, usegmt=True)
    text: str = _now[1]
    return text


async def send_answer(
    send: Send,
    status: int,
    body: bytes,
    media_type: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send the answer a Starlette ``Response(body, status, headers, media_type)`` sends,
    header for header in the same order (``headers`` first, lower-case, then length and
    type), without making that object."""
    raw = [
        *headers,
        (b"content-length", str(len(body)).encode()),
        (b"content-type", media_type.encode("latin-1")),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes | None:
    """The request's whole body, or None when the client went away before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def etag_for(body: bytes) -> str:
    """A strong ETag for a response body (the data's version)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
