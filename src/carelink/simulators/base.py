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
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from email.utils import formatdate
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


class ResponseCache:
    """Rendered answers by request: the population never changes while a simulator runs,
    so the same question gets the same bytes without rendering them again."""

    def __init__(self, maxsize: int = 2048) -> None:
        self.maxsize = maxsize
        self.items: OrderedDict[tuple[str, str, str, bytes], Response] = OrderedDict()

    async def answer(self, request: Request, handler: Handler) -> Response:
        body = await request.body() if request.method == "POST" else b""
        key = (request.method, request.url.path, request.url.query, body)
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


def _fresh(cached: Response) -> Response:
    headers = {
        k: v
        for k, v in cached.headers.items()
        if k.lower() not in ("content-length", "content-type", "last-modified")
    }
    headers["Last-Modified"] = formatdate(usegmt=True)
    return Response(
        cached.body, status_code=cached.status_code, headers=headers, media_type=cached.media_type
    )


def with_behaviour(
    behaviour: Behaviour,
    handler: Handler,
    malformed: bytes = MALFORMED,
    cache: ResponseCache | None = None,
) -> Handler:
    """Wrap a route handler with latency, fault injection and (optionally) a response cache."""

    async def wrapped(request: Request) -> Response:
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
        if cache is not None:
            return await cache.answer(request, handler)
        return await handler(request)

    return wrapped


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


def etag_for(body: bytes) -> str:
    """A strong ETag for a response body (the data's version)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
