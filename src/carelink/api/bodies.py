"""Request bodies: the right content type (415), bounded (413), JSON (400), shallow (400).

``json_body`` is what every route that takes a body calls. The size limit is
enforced before the body is read (``limits.judge``, run by ``api.front``); here the body's
media type must be ``application/fhir+json`` or ``application/json`` (FHIR's
JSON, and plain JSON for CDS Hooks), and its nesting at most
``max_json_depth`` levels, checked without recursion so a deep body costs no
stack.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Request

from carelink.errors import InvalidRequest, UnsupportedMediaType

JSON_TYPES = frozenset({"application/fhir+json", "application/json"})

#: what FHIR R4 strings may not hold: characters below U+0020 but tab, CR and LF
#: (PostgreSQL stores no NUL at all: one in a value read into a query failed it with 500)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
#: how JSON writes such a character (it may not appear raw): a cheap first look
_ESCAPED_CONTROL = re.compile(rb"\\(u00[01]|[bf])")
CONTROL_MESSAGE = (
    "FHIR strings may not hold control characters (below U+0020, but tab, carriage "
    "return and line feed)"
)


def controlled(raw: bytes, value: Any) -> bool:
    """Does a parsed JSON body hold a control character in a key or string? Only a body
    whose bytes could say one (an escape) is walked."""
    if _ESCAPED_CONTROL.search(raw) is None:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if CONTROL.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in a parsed JSON value (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((c, level + 1) for c in children)
    return deepest


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or the error that says why not (nothing is stored then)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES:
        raise UnsupportedMediaType(
            "send the body as application/fhir+json (or application/json)", "Content-Type"
        )
    raw = await request.body()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON") from None
    if controlled(raw, value):
        raise InvalidRequest(CONTROL_MESSAGE)
    limit: int = request.app.state.settings.max_json_depth
    if depth(value) > limit:
        raise InvalidRequest(f"the body nests more than {limit} levels deep")
    return value
