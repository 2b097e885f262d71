"""Request bodies: the right content type (415), bounded (413), JSON (400), shallow (400).

``json_body`` is what every route that takes a body calls. The size limit is
enforced before the body is read (``limits.BoundedInput``); here the body's
media type must be ``application/fhir+json`` or ``application/json`` (FHIR's
JSON, and plain JSON for CDS Hooks), and its nesting at most
``max_json_depth`` levels, checked without recursion so a deep body costs no
stack.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from carelink.errors import InvalidRequest, UnsupportedMediaType

JSON_TYPES = frozenset({"application/fhir+json", "application/json"})


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
    try:
        value = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON") from None
    limit: int = request.app.state.settings.max_json_depth
    if depth(value) > limit:
        raise InvalidRequest(f"the body nests more than {limit} levels deep")
    return value
