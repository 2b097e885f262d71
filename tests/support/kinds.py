"""What a stub source must answer to be taken for its kind of system (``sources.kind``):
the smallest reply each first-contact question accepts, for tests whose own server
stands in for one source (it answers one fixed record, notes what it was sent ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.sources.kind import SIGNATURES

#: kind -> (content type, body, extra headers)
REPLIES: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "acute": (
        "application/fhir+json",
        orjson.dumps(
            {
                "resourceType": "CapabilityStatement",
                "fhirVersion": "4.0.1",
                "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}],
            }
        ),
        {},
    ),
    "gp": (
        "application/fhir+json",
        orjson.dumps(
            {
                "resourceType": "CapabilityStatement",
                "fhirVersion": "3.0.1",
                "rest": [{"mode": "server", "operation": [{"name": "gpc.getstructuredrecord"}]}],
            }
        ),
        {},
    ),
    "community": ("x-application/hl7-v2+er7", b"", {"X-Total-Count": "0"}),
    "social-care": ("application/json", orjson.dumps({"items": [], "totalItems": 0}), {}),
}


def is_kind_question(kind: str, path: str) -> bool:
    """Is a request for ``path`` the first-contact question of ``kind`` (under any base)?"""
    return path.endswith(SIGNATURES[kind].path.partition("?")[0])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answering_kind(kind: str, handler: Handler) -> Handler:
    """An aiohttp handler that answers ``kind``'s first-contact question itself and passes
    every other request to ``handler``."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and is_kind_question(kind, request.path):
            content_type, body, headers = REPLIES[kind]
            return web.Response(body=body, content_type=content_type, headers=headers)
        return await handler(request)

    return wrapped


def kind_route(kind: str) -> Route:
    """A Starlette route answering ``kind``'s first-contact question at the server root."""

    async def reply(request: Request) -> Response:
        content_type, body, headers = REPLIES[kind]
        return Response(body, media_type=content_type, headers=headers)

    return Route(SIGNATURES[kind].path.partition("?")[0], reply)
