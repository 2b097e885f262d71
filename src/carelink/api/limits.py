"""Bounded input, before any route runs: request headers and body size, and URLs
without control characters (400: FHIR strings hold none, PostgreSQL no NUL).

Steps of the front layer (``api.front``), with no buffering: headers over
``max_header_bytes`` in total are answered 431; a body whose
``Content-Length`` is over ``max_body_bytes`` is answered 413 unread, and a
chunked body is counted as it arrives and cut off with 413 the moment it
passes the limit. Either way no route sees it, so nothing is stored.
(The HTTP server bounds headers too: ``carelink serve`` sets h11's
incomplete-event limit, so a slow header flood is cut off before it is parsed.)
"""

from __future__ import annotations

import re
from itertools import chain

from carelink.api.bodies import CONTROL, CONTROL_MESSAGE
from carelink.api.dispatch import Message, Receive, Scope, Send, first_headers
from carelink.errors import PayloadTooLarge
from carelink.fhir import dumps, error_outcome

#: a control character FHIR strings may not hold (``bodies.CONTROL``), percent-encoded
_CONTROL_IN_QUERY = re.compile(rb"%(0[0-8bBcCeEfF]|1[0-9a-fA-F])")


async def refuse(send: Send, status: int, code: str, message: str) -> None:
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


#: a request the bounds refuse: its status, OperationOutcome code and message
Refusal = tuple[int, str, str]


def body_message(max_body: int) -> str:
    return f"the request body is over the limit of {max_body} bytes"


def judge(scope: Scope, max_body: int, max_headers: int) -> Refusal | bool:
    """The bounds' verdict on a request from its URL and headers alone: a refusal, or
    whether its body must be counted as it arrives (declared or chunked; a request
    with neither has no body, HTTP/1.1, RFC 9112 6.3: most requests, a GET)."""
    if _CONTROL_IN_QUERY.search(scope.get("query_string", b"")) or CONTROL.search(
        scope.get("path", "")
    ):
        return 400, "invalid", f"{CONTROL_MESSAGE}: the URL holds one"
    headers = scope.get("headers") or ()
    # their size: each name and value, and 4 bytes a line (": " and CRLF)
    if sum(map(len, chain.from_iterable(headers))) + 4 * len(headers) > max_headers:
        return 431, "too-costly", "the request headers are too large"
    given = first_headers(scope)
    length = given.get(b"content-length")  # the first, when repeated
    if length is None:
        return b"transfer-encoding" in given
    try:
        declared = int(length)
    except ValueError:
        return 400, "invalid", "Content-Length is not a number"
    if declared > max_body:
        return 413, "too-costly", body_message(max_body)
    return True


def counted(receive: Receive, max_body: int) -> Receive:
    """``receive``, raising ``PayloadTooLarge`` the moment the body passes ``max_body``
    (the app's error handlers answer 413 for it: the route is mid-read)."""
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_body:
                raise PayloadTooLarge(body_message(max_body))
        return message

    return counting
