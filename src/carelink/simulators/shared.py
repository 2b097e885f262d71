"""Resources outside every patient's compartment (Practitioner, Organization, ...) at a
FHIR simulator, found from the references of a patient's record so ``$everything`` can
include them (R4: it SHOULD include resources the record refers to). Reads by id and
identifier are the simulators' general ``/{Type}/{id}`` and ``/{Type}?identifier=`` routes.

Only stores holding such resources (``FileStore``, from files) take part; the
synthetic population has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import orjson

from carelink.fhir.shared_types import SHARED_TYPES

Json = dict[str, Any]

#: a literal or conditional reference to a shared resource, in serialised JSON
_SHARED_REF = re.compile(
    rb'"reference":"((?:' + "|".join(SHARED_TYPES).encode() + rb')[/?][^"\\\\]*)"'
)
#: a Reference given by identifier (an ``identifier`` that is an object, not a list)
_LOGICAL = b'"identifier":{'


@runtime_checkable
class SharedStore(Protocol):
    """A store that also holds shared resources."""

    def shared_resource(self, rtype: str, local: str) -> Json | None:
        """The shared resource ``rtype/local``."""
        ...

    def shared_by_identifier(self, rtype: str, system: str | None, value: str) -> Json | None:
        """The shared resource of type ``rtype`` with identifier ``system|value``."""
        ...


def _refs(value: Any) -> Iterator[Json]:
    if isinstance(value, dict):
        if "reference" in value or isinstance(value.get("identifier"), dict):
            yield value
        for v in value.values():
            if isinstance(v, dict | list):
                yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict | list):
                yield from _refs(v)


def target(store: SharedStore, ref: Json) -> Json | None:
    """The shared resource a Reference points at: literal (``Type/id``), conditional
    (``Type?identifier=system|value``) or logical (``identifier`` alone)."""
    literal = ref.get("reference")
    if isinstance(literal, str):
        rtype, sep, rest = literal.partition("?")
        if sep:
            if rtype not in SHARED_TYPES or not rest.startswith("identifier="):
                return None
            system, bar, value = rest.removeprefix("identifier=").rpartition("|")
            return store.shared_by_identifier(rtype, system if bar else None, value)
        parts = literal.split("/")
        if len(parts) == 2 and parts[0] in SHARED_TYPES:
            return store.shared_resource(parts[0], parts[1])
        return None
    ident = ref.get("identifier")
    if not isinstance(ident, dict) or "value" not in ident:
        return None
    types = [ref["type"]] if ref.get("type") in SHARED_TYPES else SHARED_TYPES
    for rtype in types:
        hit = store.shared_by_identifier(rtype, ident.get("system"), ident["value"])
        if hit is not None:
            return hit
    return None


def referenced(store: SharedStore, resources: Iterable[Json]) -> list[Json]:
    """The shared resources ``resources`` refer to, and those these refer to, once each."""
    found: dict[tuple[str, str], Json] = {}
    todo = list(resources)
    while todo:
        resource = todo.pop()
        # scanning the serialised resource is many times faster than walking it in Python;
        # only a resource holding a logical reference is walked
        raw = orjson.dumps({k: v for k, v in resource.items() if k != "contained"})
        refs: list[Json] = [{"reference": m.decode()} for m in _SHARED_REF.findall(raw)]
        if _LOGICAL in raw:
            refs += [r for r in _refs(resource) if "reference" not in r]
        for ref in refs:
            hit = target(store, ref)
            if hit is None:
                continue
            key = (hit["resourceType"], str(hit["id"]))
            if key not in found:
                found[key] = hit
                todo.append(hit)
    return [found[k] for k in sorted(found)]
