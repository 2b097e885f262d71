"""Walking a FHIR R4 resource (a dict) with the FHIR type of every node.

Types come from ``carelink/fhir/r4_types.json``, derived from the official R4
JSON schema by ``scripts/gen_fhir_types.py``. The schema gives coded elements
with a fixed value set (``gender``, ``status``) as plain strings; the walker
corrects those to ``code`` from the FHIRPath model's element types, so
``string`` and ``markdown`` are text, possibly free text (inlined text
choices such as ``valueString`` stay ``markdown``, as the table has them). A node is
where a value sits (its container and key, so it can be replaced or removed),
its value, its FHIR type and its FHIRPath-style path (``Patient.name.given``).

A primitive's id and extensions sit beside it in FHIR JSON, under ``_name``
(``"_birthDate": {"extension": [...]}``; for a repeating primitive a list
parallel to the values, with nulls). The walker yields that companion as a
node of type ``Element`` (element ``_birthDate``, path
``Patient.birthDate``) right after its primitive, and then what is inside it,
so ``nodesByType('Extension')`` reaches the extensions; the primitive's node
points at it (``companion``) and ``below`` treats it as the primitive's
child, as FHIR's element model does. A companion with no value beside it
(``"_birthDate"`` alone, e.g. a data-absent reason) comes with a primitive
node whose value is ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fhirpathpy.models import models

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
    companion: Node | None = None  # a primitive's ``_name`` element (id, extensions)


def walk(resource: Json) -> Iterator[Node]:
    """Every node of a resource, depth first, parents before children.

    Resources nested in it (``contained``, Bundle ``entry.resource``) are
    yielded as nodes of type ``Resource`` but not entered: each is a
    resource of its own.
    """
    rtype = str(resource.get("resourceType", ""))
    yield from _walk_dict(resource, rtype, rtype, rtype)


def below(node: Node) -> Iterator[Node]:
    """The nodes inside ``node`` (not ``node`` itself); a primitive's companion
    and what it holds count as inside it."""
    if node.companion is not None:
        c = node.companion
        yield c
        if isinstance(c.value, dict):
            yield from _walk_dict(c.value, ELEMENT, c.path, ELEMENT)
    elif isinstance(node.value, dict) and node.type not in PRIMITIVES and node.type != "Resource":
        yield from _walk_dict(node.value, node.type, node.path, _definition(node.type, node.path))


def is_companion(node: Node) -> bool:
    """Is this a primitive's ``_name`` element (its id and extensions)?"""
    return node.type == ELEMENT and str(node.element).startswith("_")


ELEMENT = "Element"


def _walk_dict(obj: Json, type_name: str, path: str, definition: str) -> Iterator[Node]:
    props = types().get(type_name, {})
    for key, value in list(obj.items()):
        if key == "resourceType":
            continue
        if key.startswith("_"):
            if key[1:] not in obj:  # an id or extensions with no value beside them
                elem_type = _refined(definition, key[1:], props.get(key[1:], "string"))
                yield from _primitives(obj, key[1:], None, value, elem_type, path, type_name)
            continue
        elem_type = _refined(definition, key, props.get(key, "string"))
        child_path = f"{path}.{key}"
        if elem_type in PRIMITIVES:
            yield from _primitives(obj, key, value, obj.get("_" + key), elem_type, path, type_name)
            continue
        child_definition = _definition(elem_type, f"{definition}.{key}")
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
            if isinstance(item, dict):
                yield from _walk_dict(item, elem_type, child_path, child_definition)


def _primitives(
    obj: Json, key: str, value: Any, extra: Any, elem_type: str, path: str, type_name: str
) -> Iterator[Node]:
    """A primitive element's nodes (one per repeat), each followed by its companion.

    A companion with no value beside it gets a node whose value is ``None``
    and whose place is not in the resource (nothing is written through it).
    """
    child_path = f"{path}.{key}"
    places: list[tuple[Any, Any, Any, Any]] = []  # value's container and key, companion's
    if isinstance(value, list) or isinstance(extra, list):
        values = value if isinstance(value, list) else []
        extras = extra if isinstance(extra, list) else []
        for i in range(max(len(values), len(extras))):
            here: tuple[Any, Any] = (values, i) if i < len(values) else ({}, key)
            there = (extras, i) if i < len(extras) and extras[i] is not None else (None, None)
            places.append((*here, *there))
    else:
        places.append((obj, key, obj if extra is not None else None, "_" + key))
    for container, at, holder, hkey in places:
        item = container.get(at) if isinstance(container, dict) else container[at]
        companion = None
        if holder is not None:
            companion = Node(holder, hkey, holder[hkey], ELEMENT, child_path, "_" + key, type_name)
        yield Node(container, at, item, elem_type, child_path, key, type_name, companion)
        if companion is not None:
            yield companion
            if isinstance(companion.value, dict):
                yield from _walk_dict(companion.value, ELEMENT, child_path, ELEMENT)


def _definition(type_name: str, path: str) -> str:
    """The path the FHIRPath model knows an element's children by: a data type's
    name, or for a backbone element the path to it from its resource."""
    if "_" not in type_name and type_name[:1].isupper():
        return type_name
    return str(models["r4"]["pathsDefinedElsewhere"].get(path, path))


@cache
def _refined(definition: str, key: str, table_type: str) -> str:
    """The table's type, with coded elements the schema gave as strings corrected.

    Only ``string`` to ``code``: the table types inlined text choices
    (``valueString``) as ``markdown``, and profiles rely on
    ``nodesByType('markdown')`` reaching them.
    """
    if table_type != "string":
        return table_type
    model = models["r4"]["path2Type"].get(f"{definition}.{key}")
    return "code" if model == "code" else table_type
