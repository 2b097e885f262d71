"""Walking a FHIR R4 resource (a dict) with the FHIR type of every node.

Types come from ``carelink/fhir/r4_types.json``, derived from the official R4
JSON schema by ``scripts/gen_fhir_types.py``. A node is where a value sits
(its container and key, so it can be replaced or removed), its value, its
FHIR type and its FHIRPath-style path (``Patient.name.given``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

Json = dict[str, Any]
PRIMITIVES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)


@cache
def types() -> dict[str, dict[str, str]]:
    """The element-type table."""
    text = resources.files("carelink.fhir").joinpath("r4_types.json").read_text("utf-8")
    table: dict[str, dict[str, str]] = json.loads(text)
    return table


@dataclass
class Node:
    """One value in a resource, and where it sits."""

    container: Any  # dict or list
    key: Any  # str for a dict, int for a list
    value: Any
    type: str
    path: str  # Patient.name.given (no indexes)
    element: str  # the element's name (``given``; ``effectiveDateTime`` for a choice)


def walk(resource: Json) -> Iterator[Node]:
    """Every node of a resource, depth first, parents before children."""
    rtype = str(resource.get("resourceType", ""))
    yield from _walk_dict(resource, rtype, rtype)


def _walk_dict(obj: Json, type_name: str, path: str) -> Iterator[Node]:
    table = types()
    props = table.get(type_name, {})
    for key, value in list(obj.items()):
        if key in ("resourceType",) or key.startswith("_"):
            continue
        elem_type = props.get(key)
        if elem_type is None:
            elem_type = "Resource" if key == "resource" else "string"
        child_path = f"{path}.{key}"
        if elem_type == "ResourceList" or (
            key in ("contained", "resource") and isinstance(value, dict | list)
        ):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, dict) and "resourceType" in item:
                    holder = value if isinstance(value, list) else obj
                    yield Node(
                        holder,
                        i if isinstance(value, list) else key,
                        item,
                        "Resource",
                        child_path,
                        key,
                    )
                    yield from _walk_dict(
                        item, str(item["resourceType"]), str(item["resourceType"])
                    )
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _node(value, i, item, elem_type, child_path, key)
        else:
            yield from _node(obj, key, value, elem_type, child_path, key)


def _node(
    container: Any, key: Any, value: Any, elem_type: str, path: str, element: str
) -> Iterator[Node]:
    yield Node(container, key, value, elem_type, path, element)
    if isinstance(value, dict) and elem_type not in PRIMITIVES:
        yield from _walk_dict(value, elem_type, path)
