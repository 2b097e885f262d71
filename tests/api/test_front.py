"""The one front layer's input bounds where a body passes the limit mid-read: before the
answer has started, 413 in its place; after, the answer stands as it went, the request
ends without an error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from carelink.api.front import Front, request_for
from carelink.observability import Metrics, Telemetry


@pytest.mark.parametrize("answer_first", [False, True])
def test_a_body_over_the_limit_mid_read(answer_first: bool) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()  # over the limit: raises
        await send({"type": "http.response.start", "status": 201, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/livez",  # public: the audit's safety net leaves it alone
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked")],
    }
    front = Front(app, Telemetry(Metrics()), [], max_body_bytes=4, max_header_bytes=1000)
    asyncio.run(front(scope, receive, send))
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert starts == ([200] if answer_first else [413])


def test_a_request_made_for_an_endpoint_is_starlettes_own():
    """``request_for`` sets what Starlette's two constructors set, nothing else."""

    async def receive() -> dict[str, Any]:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:  # pragma: no cover - never sent
        pass

    scope = {"type": "http", "method": "GET", "path": "/fhir/Patient", "headers": []}
    made = request_for(scope, receive, send)
    assert type(made) is Request
    assert vars(made) == vars(Request(scope, receive, send))
