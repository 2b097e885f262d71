"""The ceilings: bare apps answering every request with the same bytes.

``app`` is raw ASGI, what the machine can serve when the gateway does no work
at all; ``fastapi_app`` is a bare FastAPI endpoint (one route, no middleware of
ours), what the framework alone costs. Run with ``BARE_BODY=path uvicorn
benchmarks.bare:app --loop uvloop --http httptools`` (or ``benchmarks.bare:fastapi_app``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

BODY = Path(os.environ["BARE_BODY"]).read_bytes()
MEDIA_TYPE = "application/fhir+json"
HEADERS = [
    (b"content-type", MEDIA_TYPE.encode()),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer 200 with BODY to any HTTP request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


fastapi_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_app.get("/{path:path}")
async def bare_endpoint(path: str) -> Response:
    """BODY for any GET, as a FastAPI endpoint returns ready bytes."""
    return Response(BODY, media_type=MEDIA_TYPE)
