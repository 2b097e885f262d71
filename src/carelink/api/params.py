"""Reading a FHIR request's query: format, Prefer, paging, result parameters."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request

from carelink.api.bodies import CONTROL, CONTROL_MESSAGE, controlled
from carelink.errors import InvalidRequest, UnsupportedFormat

JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)
#: the media ranges of an ``Accept`` header that admit FHIR JSON
ACCEPTED = JSON_FORMATS | {"*/*", "application/*"}
#: result parameters every search accepts
RESULT_PARAMS = {"_count", "_offset", "_elements", "_summary", "_format", "_pretty"}


def check_format(request: Request) -> None:
    """406 unless the caller accepts FHIR JSON (``_format`` wins over ``Accept``)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip() not in JSON_FORMATS:
            raise UnsupportedFormat(f"_format '{fmt}' is not supported; use json", "_format")
        return
    accept = request.headers.get("accept", "")
    if accept:
        check_accept(accept)


def check_accept(accept: str) -> None:
    """406 unless the ``Accept`` header admits FHIR JSON."""
    if accept in ACCEPTED:  # one range alone, as nearly every client sends it
        return
    kinds = [a.split(";")[0].strip() for a in accept.split(",")]
    if not any(k in ACCEPTED for k in kinds):
        raise UnsupportedFormat(
            f"Accept '{accept}' cannot be met: the gateway serves application/fhir+json"
        )


@dataclass(frozen=True)
class Prefer:
    """The parts of the ``Prefer`` header the gateway honours."""

    strict: bool
    wait: float | None
    #: ``partial=fail``: a source that failed fails the request (503) instead of a partial answer
    complete: bool = False


#: ``Prefer: partial=fail`` asks for failure rather than a partial answer
PARTIAL_FAIL = "partial=fail"


#: no ``Prefer`` header: lenient, no wait, partial answers allowed
_NO_PREFERENCE = Prefer(False, None, False)
#: where a request's parsed ``Prefer`` is kept in its ASGI scope
_PREFER_KEY = "carelink.prefer"


def prefer(request: Request) -> Prefer:
    """Parse ``Prefer: handling=strict|lenient, wait=N, partial=fail|allow`` (the first
    such header), once per request: the answer is kept in the request's scope, as a
    request asks several times (the search, then the paging, then the answer)."""
    scope = request.scope
    known: Prefer | None = scope.get(_PREFER_KEY)
    if known is not None:
        return known
    raw = next((v for k, v in scope["headers"] if k == b"prefer"), None)
    parsed = _NO_PREFERENCE if raw is None else parse_prefer(raw.decode("latin-1"))
    scope[_PREFER_KEY] = parsed
    return parsed


def parse_prefer(header: str) -> Prefer:
    """What a ``Prefer`` header's value asks for (``InvalidRequest`` when unreadable)."""
    strict = False
    complete = False
    wait: float | None = None
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "handling":
            strict = value.strip() == "strict"
        elif key == "partial":
            if value.strip() not in ("fail", "allow"):
                raise InvalidRequest("Prefer: partial must be fail or allow")
            complete = value.strip() == "fail"
        elif key == "wait":
            try:
                wait = float(value)
            except ValueError as exc:
                raise InvalidRequest("Prefer: wait must be a number of seconds") from exc
            if wait <= 0:
                raise InvalidRequest("Prefer: wait must be positive")
    return Prefer(strict, wait, complete)


def multi(request: Request) -> dict[str, list[str]]:
    """Query parameters with repeats kept."""
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k, []).append(v)
    return out


async def body_params(request: Request) -> dict[str, list[str]]:
    """Search or operation parameters sent in a POST body: form-encoded (``_search``) or a
    FHIR ``Parameters`` resource (operations); an empty body has none."""
    raw = await request.body()
    if not raw.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as exc:
            raise InvalidRequest("the form body is not UTF-8") from exc
        out: dict[str, list[str]] = {}
        for k, v in pairs:
            if CONTROL.search(k) or CONTROL.search(v):
                raise InvalidRequest(CONTROL_MESSAGE)
            out.setdefault(k, []).append(v)
        return out
    if kind and kind not in JSON_FORMATS:
        raise InvalidRequest(
            f"a POST body of type '{kind}' is not understood: send a FHIR Parameters "
            "resource (application/fhir+json) or a form (application/x-www-form-urlencoded)"
        )
    return parameters_of(raw)


def parameters_of(raw: bytes) -> dict[str, list[str]]:
    """The name/value pairs of a FHIR ``Parameters`` body: simple values as text, an
    ``Identifier`` (``valueIdentifier``) as the token ``system|value``."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("the body is not JSON") from exc
    if controlled(raw, body):
        raise InvalidRequest(CONTROL_MESSAGE)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequest("the body must be a FHIR Parameters resource")
    given = body.get("parameter", [])
    if not isinstance(given, list):
        raise InvalidRequest("Parameters.parameter must be a list")
    out: dict[str, list[str]] = {}
    for p in given:
        values = [v for k, v in p.items() if k.startswith("value")] if isinstance(p, dict) else []
        name = p.get("name") if isinstance(p, dict) else None
        if not isinstance(name, str) or len(values) != 1:
            raise InvalidRequest("each parameter needs a name and exactly one value[x]")
        value = values[0]
        if "valueIdentifier" in p and isinstance(value, dict):
            value = _identifier_token(value, name)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidRequest(f"parameter '{name}' must have a simple value", name)
        out.setdefault(name, []).append(str(value))
    return out


def unknown(names: Iterable[str], strict: bool) -> list[str]:
    """Unknown parameters: an error under ``handling=strict``, else ignored and returned."""
    names = list(names)
    if names and strict:
        raise InvalidRequest(f"Unknown search parameter '{names[0]}'", names[0])
    return names


def int_param(params: dict[str, list[str]], name: str, default: int, upper: int) -> int:
    """A non-negative integer parameter, capped at ``upper``."""
    raw = params.get(name, [None])[-1]
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidRequest(f"Parameter '{name}' must be a non-negative integer", name)
    return min(int(raw), upper)


@dataclass(frozen=True)
class Paging:
    """``_count`` / ``_offset`` and how to write links that keep the other parameters."""

    count: int
    offset: int
    kept: tuple[tuple[str, str], ...]

    def links(self, url: str, total: int) -> dict[str, str]:
        """self, first, next, previous links."""

        kept = query_string(self.kept)
        prefix = f"{url}?{kept}&" if kept else f"{url}?"

        def at(offset: int) -> str:
            return f"{prefix}_count={self.count}&_offset={offset}"

        out = {"self": at(self.offset), "first": at(0)}
        if self.offset + self.count < total:
            out["next"] = at(self.offset + self.count)
        if self.offset > 0:
            out["previous"] = at(max(0, self.offset - self.count))
        return out

    def on_cursor(self, cursor: str) -> Paging:
        """The same page over a stored result: links carry the cursor and the patient
        (which says whose compartment is searched), not the rest of the search."""
        wanted = ("patient", "subject", "_elements", "_summary", "_format")
        kept = tuple((k, v) for k, v in self.kept if k in wanted)
        return replace(self, kept=(("_cursor", cursor), *kept))


#: what ``urlencode`` leaves as it is (``quote_plus``'s always-safe characters)
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def query_string(pairs: Sequence[tuple[str, str]]) -> str:
    """``urlencode(pairs)``: names and values that need no encoding (a search's, nearly
    always) joined as they are, without quoting each in turn."""
    plain = _PLAIN.fullmatch
    if all(plain(k) and plain(v) for k, v in pairs):
        return "&".join([f"{k}={v}" for k, v in pairs])
    return urlencode(pairs)


#: ``identifier=<the NHS number system>|`` as ``Paging.links`` writes it
_LOOKUP_KEPT = urlencode((("identifier", "https://fhir.nhs.uk/Id/nhs-number|"),))


def lookup_links(url: str, nhs: str, count: int, total: int) -> dict[str, str]:
    """``Paging.links`` for the first page of the lookup by NHS number (``nhs``, ten
    digits, which need no encoding): the same links, without encoding the query anew."""
    prefix = f"{url}?{_LOOKUP_KEPT}{nhs}&_count={count}&_offset="
    out = {"self": prefix + "0", "first": prefix + "0"}
    if count < total:
        out["next"] = prefix + str(count)
    return out


def page_size(default: int) -> int:
    """The page size of a search without ``_count``, as ``paging`` reads it."""
    return max(default, 0)


def paging(params: dict[str, list[str]], used: Iterable[str], default: int, upper: int) -> Paging:
    """Paging from the query; ``used`` names the parameters to carry in links."""
    count = int_param(params, "_count", default, upper)
    offset = int_param(params, "_offset", 0, 10**9)
    keep = set(used) | {"_elements", "_summary", "_format"}
    kept = tuple((k, v) for k in sorted(params) if k in keep for v in params[k])
    return Paging(max(count, 0), offset, kept)


def elements(params: dict[str, list[str]]) -> frozenset[str] | None:
    """``_elements`` as a set of top-level element names."""
    raw = params.get("_elements")
    if not raw:
        return None
    return frozenset(e.strip() for v in raw for e in v.split(",") if e.strip())


def summary_count(params: dict[str, list[str]]) -> bool:
    """``_summary=count``; other summary modes are refused rather than ignored."""
    value = params.get("_summary", [None])[-1]
    if value in (None, "false"):
        return False
    if value == "count":
        return True
    raise InvalidRequest(f"_summary={value} is not supported (count and false are)", "_summary")


def _identifier_token(ident: dict[str, Any], name: str) -> str:
    """``system|value`` of an Identifier parameter (``value`` alone without a system)."""
    system, value = ident.get("system"), ident.get("value")
    if not isinstance(value, str) or (system is not None and not isinstance(system, str)):
        raise InvalidRequest(f"parameter '{name}' needs an Identifier with a value", name)
    return f"{system}|{value}" if system else value
