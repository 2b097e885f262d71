"""Straight to the endpoint: the gateway's routes matched without FastAPI's router.

Every gateway route is a plain ``async def (request) -> Response`` endpoint
(``deps.FhirRouter``), so the framework's routing machinery (included routers,
per-route match contexts, a second exception wrapper per route) does nothing
for them but cost time: measured on the lookup it was about a quarter of the
event loop's work (benchmarks/README.md, issue #13). ``Front`` matches each
request here, against the same routes in the same order, with the same rule as
Starlette's router: the first route whose path and method both match wins.

Only such full matches go straight to their endpoint. Anything else — no route, a path whose
method is not allowed (405 with ``Allow``), a trailing-slash redirect, the
framework's own routes (``/openapi.json``) — goes on to the framework
unchanged, so those answers are the framework's own. An exception from an
endpoint goes to the app's exception handlers, found by the exception's class
as the framework finds them; one without a handler propagates, as before, to
the front layer's steps outside (the audit safety net, the 500 of ``Front``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class _Route:
    __slots__ = ("convertors", "endpoint", "methods", "prefix", "regex")

    def __init__(self, route: Any) -> None:
        self.regex: re.Pattern[str] = route.path_regex
        self.methods: frozenset[str] = frozenset(route.methods)
        self.convertors: dict[str, Any] = route.param_convertors
        self.endpoint: Endpoint = route.endpoint
        path = getattr(route, "path", None)
        #: what every path it matches starts with: its path up to the first parameter
        self.prefix: str = path.partition("{")[0] if isinstance(path, str) else ""


#: where a request's headers by name are kept in its scope (``first_headers``)
HEADERS = "carelink.headers"


def first_headers(scope: Scope) -> dict[bytes, bytes]:
    """Each header of the request by its name (lower case, as the server gives every
    name), its first value when repeated: made on first use and kept in the scope, so a
    request's headers are walked once for its id, its bounds, its token and the route's
    own questions (``Accept``, ``Prefer``)."""
    found: dict[bytes, bytes] | None = scope.get(HEADERS)
    if found is None:
        # the last of a name's values written last: reversed, its first value wins
        found = scope[HEADERS] = dict(reversed(scope.get("headers") or ()))
    return found


def route_path(scope: Scope) -> str:
    """The path the routes are matched against: the request's, less any ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


class Routes:
    """The gateway's routes, matched as Starlette's router matches them: in order, the
    first whose path and method both match (``Dispatch``; the audit safety net, for a
    request refused before it was routed)."""

    def __init__(self, routes: Iterable[Any]) -> None:
        routes = list(routes)
        self.routes = [
            _Route(r)
            for r in routes
            if hasattr(r, "path_regex") and getattr(r, "methods", None) and hasattr(r, "endpoint")
        ]
        #: each path some route has without parameters -> the routes whose pattern
        #: matches that very path, in order: the scan's answer for it, worked out once
        self._fixed: dict[str, list[_Route]] = {}
        for r in routes:
            path = getattr(r, "path", None)
            if isinstance(path, str) and "{" not in path and path not in self._fixed:
                self._fixed[path] = [x for x in self.routes if x.regex.match(path)]
        #: a path's first two segments (``/fhir/Patient/``) -> the routes, in order, that
        #: could match a path beginning so (their prefix and it agree as far as both
        #: go): the others' patterns are not tried. At most ``BUCKETS`` are kept
        self._buckets: dict[str, list[_Route]] = {}

    #: how many first-two-segment beginnings ``match`` keeps its routes for (a client
    #: may send any: past this many, a beginning's routes are picked out again each time)
    BUCKETS = 256

    def candidates(self, path: str) -> list[_Route]:
        """The routes, in order, that could match ``path``: every one whose literal
        prefix (its path up to its first parameter) ``path`` could begin with."""
        fixed = self._fixed.get(path)
        if fixed is not None:
            return fixed
        end = path.find("/", path.find("/", 1) + 1)
        key = path if end < 0 else path[: end + 1]
        found = self._buckets.get(key)
        if found is None:
            found = [r for r in self.routes if key.startswith(r.prefix) or r.prefix.startswith(key)]
            if len(self._buckets) < self.BUCKETS:
                self._buckets[key] = found
        return found

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, Any]] | None:
        """The first route whose path and method match, with its path parameters."""
        for route in self.candidates(path):
            found = route.regex.match(path)
            if found is not None and method in route.methods:
                params = found.groupdict()
                for key, value in params.items():
                    params[key] = route.convertors[key].convert(value)
                return route, params
        return None


class Dispatch:
    """What ``api.front.Front`` needs to send a request straight to its endpoint: the
    route it fully matches (``match``), and the app's handler for an exception the
    endpoint raised (``handler``)."""

    def __init__(self, routes: Iterable[Any]) -> None:
        self.routes = Routes(routes)
        self.match = self.routes.match
        self._handlers: dict[type[BaseException], Handler] | None = None

    def handler(self, scope: Scope, exc: Exception) -> Handler | None:
        """The app's handler for ``exc``, by the nearest class that has one (an
        ``HTTPException`` first by its status code), as the framework chooses. The
        catch-all ``Exception`` handler is left to the framework's outermost layer."""
        if self._handlers is None:
            registered: dict[Any, Handler] = dict(scope["app"].exception_handlers)
            self._status = {k: v for k, v in registered.items() if isinstance(k, int)}
            self._handlers = {
                k: v
                for k, v in registered.items()
                if isinstance(k, type) and k is not Exception and issubclass(k, BaseException)
            }
        if isinstance(exc, HTTPException) and exc.status_code in self._status:
            return self._status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        return None
