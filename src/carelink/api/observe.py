"""The HTTP edge of observability: request ids, the access line and request metrics.

Steps of the front layer (``api.front``), outermost, so they see every answer: the app's, the
input bounds' refusals, the audit's fail-closed 503s, and a 500 for an
exception nothing handled (answered there, so that one carries its id too).

- ``X-Request-ID``: the caller's when well formed (``observability.context``),
  else a new UUID4; bound for the request (audit, outbound source requests and
  log lines read it) and returned on every response.
- One access line and the request metrics once the answer is complete, labelled
  by the route template (``/fhir/Patient/{pid}``), never the path as sent, which
  may hold an NHS number; a path no route matched is ``unmatched``. Probes and
  scrapes that succeed are logged at debug level (they come every few seconds);
  they are counted all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from starlette.types import Message, Scope

from carelink.api.dispatch import first_headers
from carelink.api.probe_routes import PROBES
from carelink.observability import HEADER, Telemetry, accept_request_id

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
_HEADER = HEADER.lower().encode()


def templates(routes: Iterable[Any]) -> dict[Any, str]:
    """Each route's endpoint and path template (``/fhir/Patient/{pid}``)."""
    return {r.endpoint: r.path for r in routes if hasattr(r, "endpoint") and hasattr(r, "path")}


def route_of(scope: Scope, known: dict[Any, str]) -> str:
    """The template of the route that served the request, or ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    return known.get(scope.get("endpoint"), UNMATCHED)


def request_id(scope: Scope) -> str:
    """The request's id (the caller's when well formed, else new), in its state too."""
    given = first_headers(scope).get(_HEADER)
    found = accept_request_id(given.decode("latin-1") if given is not None else None)
    scope.setdefault("state", {})["request_id"] = found
    return found


def id_headers(headers: Iterable[tuple[bytes, bytes]], value: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` carrying ``value`` as their one ``X-Request-ID``."""
    out = [(k, v) for k, v in headers if k.lower() != _HEADER]
    out.append((_HEADER, value))
    return out


def with_id(message: Message, value: bytes) -> Message:
    """A response start carrying ``value`` as its one ``X-Request-ID``."""
    return {**message, "headers": id_headers(message.get("headers", []), value)}


def logged(telemetry: Telemetry, scope: Scope, route: str, status: int, seconds: float) -> None:
    """The access line and the metrics of one finished request."""
    method = scope["method"] if scope["method"] in METHODS else "other"
    level = logging.DEBUG if route in PROBES and status < 400 else logging.INFO
    telemetry.request(method, route, status, seconds, level)
