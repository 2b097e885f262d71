"""The front layer's observing steps (``api.front.Front`` over a bare app, on a public
path, so the audit safety net stands aside): request ids in and out, and a 500 for an
exception nothing handled still carries its id and leaves an access line."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from carelink.api.front import Front
from carelink.observability import JsonFormatter, Metrics, Telemetry, current_request_id


class _Route:
    path = "/fhir/Thing/{tid}"

    @staticmethod
    async def endpoint() -> None:  # pragma: no cover - only its identity matters
        return None


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    scope["endpoint"] = _Route.endpoint  # as the router marks the route it chose
    body = (current_request_id() or "").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


def _front(app: Any, telemetry: Telemetry, routes: Any = ()) -> Front:
    """The gateway's one front layer over ``app``: what observes every request."""
    return Front(app, telemetry, routes, max_body_bytes=1_000, max_header_bytes=8_000)


def _call(
    app: Any, headers: list[tuple[bytes, bytes]]
) -> tuple[list[Message], BaseException | None]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/fhir/metadata",  # public: no AuditEvent, so no trail is needed here
        "query_string": b"patient=9434765919",
        "headers": headers,
        "state": {},
    }
    try:
        asyncio.run(app(scope, receive, send))
    except Exception as exc:
        return sent, exc
    return sent, None


def _header(messages: list[Message]) -> str:
    start = next(m for m in messages if m["type"] == "http.response.start")
    values = [v.decode() for k, v in start["headers"] if k == b"x-request-id"]
    assert len(values) == 1
    return values[0]


def test_the_bound_id_is_what_the_app_sees_and_what_the_response_carries(caplog):
    app = _front(_ok, Telemetry(Metrics()), routes=[_Route])
    with caplog.at_level(logging.INFO, logger="carelink.access"):
        sent, error = _call(app, [(b"x-request-id", b"abc-1")])
    assert error is None
    assert _header(sent) == "abc-1"
    assert sent[-1]["body"] == b"abc-1"
    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["route"] == "/fhir/Thing/{tid}"
    assert "9434765919" not in json.dumps(line)


def test_a_response_header_of_the_same_name_from_the_app_is_replaced():
    async def echoing(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"other")]}
        )
        await send({"type": "http.response.body", "body": b""})

    sent, _ = _call(_front(echoing, Telemetry(Metrics())), [(b"x-request-id", b"mine")])
    assert _header(sent) == "mine"


def test_an_unhandled_exception_is_answered_500_with_the_id_and_logged(caplog):
    app = _front(_broken, Telemetry(Metrics()))
    with caplog.at_level(logging.INFO, logger="carelink.access"):
        sent, error = _call(app, [(b"x-request-id", b"boom-1")])
    assert isinstance(error, RuntimeError)  # still raised, for the server to log
    assert sent[0]["status"] == 500
    assert _header(sent) == "boom-1"
    assert json.loads(sent[1]["body"])["resourceType"] == "OperationOutcome"
    record = caplog.records[-1]
    assert record.fields["status"] == 500  # type: ignore[attr-defined]
    assert record.fields["route"] == "unmatched"  # type: ignore[attr-defined]


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_other_scopes_pass_through_untouched(scope_type):
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    asyncio.run(_front(inner, Telemetry(Metrics()))({"type": scope_type}, None, None))  # type: ignore[arg-type]
    assert seen == [scope_type]
