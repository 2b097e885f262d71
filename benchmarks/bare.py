"""The ceiling: a bare ASGI app answering every request with the same bytes.

Run with ``BARE_BODY=path uvicorn benchmarks.bare:app --loop uvloop --http httptools``;
it is what the machine can serve when the gateway does no work at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BODY = Path(os.environ["BARE_BODY"]).read_bytes()
HEADERS = [
    (b"content-type", b"application/fhir+json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer 200 with BODY to any HTTP request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
