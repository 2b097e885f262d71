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
    parent_type: str = ""  # the FHIR type of the element holding this one


def walk(resource: Json) -> Iterator[Node]:
    """Every node of a resource, depth first, parents before children.

    Resources nested in it (``contained``, Bundle ``entry.resource``) are
    yielded as nodes of type ``Resource`` but not entered: each is a
    resource of its own.
    """
    rtype = str(resource.get("resourceType", ""))
    yield from _walk_dict(resource, rtype, rtype)


def below(node: Node) -> Iterator[Node]:
    """The nodes inside ``node`` (not ``node`` itself)."""
    if isinstance(node.value, dict) and node.type not in PRIMITIVES and node.type != "Resource":
        yield from _walk_dict(node.value, node.type, node.path)


def _walk_dict(obj: Json, type_name: str, path: str) -> Iterator[Node]:
    props = types().get(type_name, {})
    for key, value in list(obj.items()):
        if key == "resourceType" or key.startswith("_"):
            continue
        elem_type = props.get(key, "string")
        child_path = f"{path}.{key}"
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            container, at = (value, i) if isinstance(value, list) else (obj, key)
            if (
                isinstance(item, dict)
                and "resourceType" in item
                and key in ("contained", "resource")
            ):
                yield Node(container, at, item, "Resource", child_path, key, type_name)
                continue
            yield Node(container, at, item, elem_type, child_path, key, type_name)
            if isinstance(item, dict) and elem_type not in PRIMITIVES:
                yield from _walk_dict(item, elem_type, child_path)
