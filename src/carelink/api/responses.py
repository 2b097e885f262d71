"""HTTP out: FHIR JSON bytes, errors as OperationOutcome with the right status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from carelink import errors
from carelink.fhir import FHIR_JSON, dumps, error_outcome

#: seconds a client is asked to wait after a 503 (the database or audit trail is away)
RETRY_AFTER = "5"
_CONTENT_TYPE = (b"content-type", FHIR_JSON.encode())

STATUS = (
    (errors.UnsupportedFormat, 406, "not-supported"),
    (errors.UnsupportedMediaType, 415, "not-supported"),
    (errors.PayloadTooLarge, 413, "too-costly"),
    (errors.UnprocessableResource, 422, "business-rule"),
    (errors.InvalidRequest, 400, "invalid"),
    (errors.NotFound, 404, "not-found"),
    (errors.Gone, 410, "expired"),
    (errors.Unauthenticated, 401, "login"),
    (errors.ConsentDenied, 403, "forbidden"),
    (errors.AccessDenied, 403, "forbidden"),
    (errors.AuditError, 503, "exception"),
    (errors.StorageUnavailable, 503, "transient"),
    (errors.CarelinkError, 500, "exception"),
)


def fhir(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
    """A FHIR JSON response from a dict or ready bytes."""
    return Answer(body if isinstance(body, bytes) else dumps(body), headers, status)


class Answer(Response):
    """FHIR JSON bytes, sent as their two ASGI messages: the one sender of the gateway's
    FHIR answers (``fhir``, the hot routes, the OperationOutcomes). Status and headers
    are what Starlette's ``Response(body, status, headers, media_type=FHIR_JSON)`` sends,
    byte for byte in the same order (the given ones lower-cased, then Content-Length
    unless given or the status has no body, then Content-Type unless given;
    ``tests/api/test_answer.py``), without the work of its constructor (media type,
    header mapping, charset) or its sending (websocket check, background task). A
    ``Response`` by type, so that the framework's routes and handlers take it, and
    ``headers`` is its mapping over the same list; ``api.front`` sends one itself."""

    def __init__(
        self, body: bytes, headers: Mapping[str, str] | None = None, status: int = 200
    ) -> None:
        length = kind = True
        if headers:
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            for name, _ in raw:
                if name == b"content-length":
                    length = False
                elif name == b"content-type":
                    kind = False
        else:
            raw = []
        if length and not (status < 200 or status in (204, 304)):
            raw.append((b"content-length", str(len(body)).encode()))
        if kind:
            raw.append(_CONTENT_TYPE)
        self.body = body
        self.raw_headers = raw
        self.status_code = status
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})


def outcome(status: int, code: str, message: str, expression: str | None = None) -> Answer:
    """An OperationOutcome error response."""
    return fhir(error_outcome(code, message, expression), status)


def from_error(exc: errors.CarelinkError) -> Answer:
    """Map a carelink error to its status and OperationOutcome (never a stack trace)."""
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            expression = getattr(exc, "parameter", None)
            message = str(exc) if status < 500 else "internal error"
            if isinstance(exc, errors.AuditError):
                message = "the audit trail is unavailable, so no patient data is served"
            if isinstance(exc, errors.StorageUnavailable):
                message = "the database is unavailable; try again shortly"
            response = outcome(status, code, message, expression)
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="carelink"'
            if status == 503:
                response.headers["Retry-After"] = RETRY_AFTER
            return response
    return outcome(500, "exception", "internal error")  # pragma: no cover - tuple ends in base


def not_modified(request: Request, etag: str, last_modified: str | None = None) -> bool:
    """True when the caller's copy is current (RFC 9110 13.2.2): ``If-None-Match`` names
    ``etag`` (weak comparison, as for GET), or, only when that header is absent,
    ``If-Modified-Since`` is at or after ``last_modified`` (an HTTP-date)."""
    header = request.headers.get("if-none-match")
    if header:
        wanted = etag.removeprefix("W/")
        return header.strip() == "*" or any(
            t.strip().removeprefix("W/") == wanted for t in header.split(",")
        )
    since = request.headers.get("if-modified-since")
    if not since or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored, as RFC 9110 says


def http_date(instant: str | None) -> str | None:
    """An RFC 9110 HTTP-date from a FHIR instant."""
    if not instant:
        return None
    try:
        return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)
    except ValueError:
        return None
