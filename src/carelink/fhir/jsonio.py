"""JSON in and out with orjson: the request path works on dicts and bytes."""

from __future__ import annotations

from typing import Any

import orjson

FHIR_JSON = "application/fhir+json"
FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON bytes."""
    return orjson.dumps(value)


def dumps_canonical(value: Any) -> bytes:
    """Serialise with sorted keys: equal content gives equal bytes (for hashing)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes or text."""
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError
