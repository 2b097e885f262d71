"""The one front layer's input bounds where a body passes the limit mid-read: before the
answer has started, 413 in its place; after, the answer stands as it went, the request
ends without an error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carelink.api.front import Front, request_for
from carelink.api.responses import fhir, outcome
from carelink.audit.trail import Serving
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


class _App:
    """What the dispatch asks of the app: its exception handlers."""

    def __init__(self, handlers: dict[Any, Any]) -> None:
        self.exception_handlers = handlers


def _dispatched(
    endpoint: Any, handlers: dict[Any, Any]
) -> tuple[list[dict[str, Any]], BaseException | None, list[int]]:
    """One GET of a public path (the audit's safety net stands aside) routed straight to
    ``endpoint``: what was sent, what was raised, the statuses the metrics counted."""
    sent: list[dict[str, Any]] = []
    telemetry = Telemetry(Metrics())
    counted: list[int] = []
    telemetry.request = lambda method, route, status, seconds, level=0: counted.append(status)  # type: ignore[method-assign]

    async def framework(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("a full match goes straight to its endpoint")

    async def receive() -> dict[str, Any]:  # pragma: no cover - never read
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/livez",
        "query_string": b"",
        "headers": [(b"x-request-id", b"rid-7")],
        "state": {},
        "app": _App(handlers),
    }
    front = Front(
        framework,
        telemetry,
        [Route("/livez", endpoint, methods=["GET"])],
        max_body_bytes=100,
        max_header_bytes=1000,
    )
    try:
        asyncio.run(front(scope, receive, send))
    except Exception as exc:
        return sent, exc, counted
    return sent, None, counted


def _starts(sent: list[dict[str, Any]]) -> list[tuple[int, list[bytes]]]:
    return [
        (m["status"], [v for k, v in m["headers"] if k == b"x-request-id"])
        for m in sent
        if m["type"] == "http.response.start"
    ]


def test_an_endpoints_answer_goes_out_once_with_the_id():
    async def endpoint(request: Request) -> Any:
        return fhir({"resourceType": "Bundle"}, headers={"X-Request-ID": "forged"})

    sent, error, counted = _dispatched(endpoint, {})
    assert error is None
    assert _starts(sent) == [(200, [b"rid-7"])]
    assert sent[1] == {"type": "http.response.body", "body": b'{"resourceType":"Bundle"}'}
    assert counted == [200]


def test_an_endpoints_error_goes_to_its_handler_and_a_handlers_error_to_the_500():
    async def endpoint(request: Request) -> Any:
        raise KeyError("gone")

    async def handled(request: Request, exc: Exception) -> Any:
        return outcome(404, "not-found", "gone")

    sent, error, counted = _dispatched(endpoint, {KeyError: handled})
    assert error is None
    assert _starts(sent) == [(404, [b"rid-7"])]
    assert counted == [404]

    async def failing(request: Request, exc: Exception) -> Any:
        raise RuntimeError("the handler failed")

    sent, error, counted = _dispatched(endpoint, {KeyError: failing})
    assert isinstance(error, RuntimeError)  # on to the server, which logs it
    assert isinstance(error.__context__, KeyError)  # raised while handling the endpoint's
    assert _starts(sent) == [(500, [b"rid-7"])]
    assert counted == [500]


def test_an_error_after_the_answer_began_is_not_handled_again_and_the_answer_stands():
    class Broken(Response):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise KeyError("the body failed")

    async def endpoint(request: Request) -> Any:
        return Broken()

    async def handled(request: Request, exc: Exception) -> Any:  # pragma: no cover
        raise AssertionError("an answer under way is not answered again")

    sent, error, counted = _dispatched(endpoint, {KeyError: handled})
    assert isinstance(error, KeyError)
    assert _starts(sent) == [(200, [b"rid-7"])]  # no 500 after it
    assert counted == [200]


@pytest.mark.parametrize("fails", [False, True])
def test_the_front_counts_the_requests_in_flight_while_they_are_served(fails: bool) -> None:
    """``Serving.now`` (what the audit's gathering window waits for) is one while a request
    is served, and back to none once it ends, answered or failed."""
    serving = Serving()
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(serving.now)
        await asyncio.sleep(0.01)  # the other request comes in meanwhile
        if fails:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/livez", "query_string": b"", "headers": []}
    front = Front(
        app, Telemetry(Metrics()), [], max_body_bytes=4, max_header_bytes=1000, serving=serving
    )

    async def twice() -> None:
        await asyncio.gather(
            front(dict(scope), receive, send),
            front(dict(scope), receive, send),
            return_exceptions=True,  # a failure the front passes on after its 500
        )

    asyncio.run(twice())
    assert seen == [1, 2]  # the second came while the first was in flight
    assert serving.now == 0
