"""Keep what R4 has a place for: the element walk at the end of ``stu3.to_r4``.

Every element of a resource is checked against the R4 element table
(``fhir/r4_types.json``); what has no place is dropped and its path noted, and
the primitives the published examples get wrong are repaired (numbers sent as
strings, codes and URIs with stray spaces, local times without a zone).

A GP practice list is converted Patient by Patient, so the walk runs on every
record a build reads from the GP: it makes no path string unless something is
dropped (a path is a chain of ``(parent, key)`` tuples until then), and a
primitive whose type is never repaired is kept without a call. ``kept_whole`` goes
further for the listing: it only looks, and says whether the walk would give back
what it was given (nothing dropped, repaired or reshaped), so a Patient that is
already R4 is kept as it is, without the walk building it again.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

LOCAL_TIME = ZoneInfo("Europe/London")
_NO_ZONE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
#: Quantity-like types whose parts are single values
SCALAR_PARTS = {"Quantity", "Duration", "Age", "Distance", "Count", "SimpleQuantity", "Money"}
_NUMERIC = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_TRIMMED = frozenset({"code", "uri", "id", "canonical", "oid", "url"})
_TIMED = frozenset({"dateTime", "instant"})
#: the primitive types ``primitive`` may change (any other is kept as sent)
_REPAIRED = _NUMERIC | _TRIMMED | _TIMED


@cache
def r4_elements() -> dict[str, dict[str, str]]:
    """Element name -> type, per R4 resource and backbone type."""
    text = resources.files("carelink.fhir").joinpath("r4_types.json").read_text("utf-8")
    table: dict[str, dict[str, str]] = json.loads(text)
    return table


def is_r4_type(resource_type: str) -> bool:
    """Is ``resource_type`` a resource type of R4?"""
    table = r4_elements()
    return resource_type in table and "contained" in table[resource_type]


@cache
def _shape(type_name: str) -> tuple[dict[str, str], frozenset[str]] | None:
    """A type's elements and their ``_`` forms (primitive extensions), None when unknown."""
    elements = r4_elements().get(type_name)
    if elements is None:
        return None
    return elements, frozenset("_" + name for name in elements)


def _render(path: Any) -> str:
    """A path chain (``(parent, key)`` tuples around the resource type) as dotted text."""
    keys: list[str] = []
    while isinstance(path, tuple):
        path, key = path
        keys.append(key)
    return ".".join([f"{path}", *reversed(keys)])


def prune(value: Any, type_name: str, path: Any, dropped: list[str]) -> Any:
    """Keep what R4 has a place for in ``value`` (of ``type_name``, at ``path``); note
    the path of everything else in ``dropped``."""
    if isinstance(value, list):
        return _prune_list(value, type_name, path, dropped)
    if not isinstance(value, dict):
        return primitive(value, type_name)
    return _prune_dict(value, type_name, path, dropped)


def _prune_list(values: list[Any], type_name: str, path: Any, dropped: list[str]) -> list[Any]:
    repaired = type_name in _REPAIRED
    out = []
    for v in values:
        if isinstance(v, dict):
            out.append(_prune_dict(v, type_name, path, dropped))
        elif isinstance(v, list):
            out.append(_prune_list(v, type_name, path, dropped))
        else:
            out.append(primitive(v, type_name) if repaired else v)
    return out


def _prune_dict(value: dict[str, Any], type_name: str, path: Any, dropped: list[str]) -> Any:
    if type_name == "ResourceList":
        rtype = value.get("resourceType")
        if not isinstance(rtype, str) or not is_r4_type(rtype):
            dropped.append(f"{_render(path)}: {rtype}")
            return None
        type_name = rtype
    shape = _shape(type_name)
    if shape is None:
        return value
    elements, underscored = shape
    scalar = type_name in SCALAR_PARTS
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "resourceType" or key in underscored:
            out[key] = v
            continue
        kind = elements.get(key)
        if kind is None:
            dropped.append(f"{_render(path)}.{key}")
            continue
        if key in ("extension", "modifierExtension"):
            v = [v] if isinstance(v, dict) else v  # published quirk: not in a list
        elif scalar and isinstance(v, list) and len(v) == 1:
            v = v[0]  # published quirk: Duration.code ["d"]
        if isinstance(v, dict):
            kept = _prune_dict(v, kind, (path, key), dropped)
            if kept is not None:
                out[key] = kept
        elif isinstance(v, list):
            if items := _prune_list(v, kind, (path, key), dropped):
                out[key] = [x for x in items if x is not None]
        elif v is not None:
            out[key] = primitive(v, kind) if kind in _REPAIRED else v
    return out


#: what ``kept_whole`` checks of an element, by the type the table gives it
_PLAIN, _TRIM, _TIME, _NUMBER_TEXT, _KEPT, _NESTED, _EXTENSION = range(7)


@cache
def _plan(type_name: str) -> tuple[dict[str, tuple[int, str]], bool] | None:
    """A type's elements, each with what ``kept_whole`` checks of it, and whether the
    type's parts are single values (None for a type the walk keeps unlooked-at)."""
    shape = _shape(type_name)
    if shape is None or type_name == "ResourceList":
        return None
    plan: dict[str, tuple[int, str]] = {"resourceType": (_KEPT, "")}
    for key, kind in shape[0].items():
        if kind == "ResourceList":
            continue  # a contained resource: the walk's own business
        if key in ("extension", "modifierExtension"):
            plan[key] = (_EXTENSION, kind)
        elif _shape(kind) is not None:
            plan[key] = (_NESTED, kind)
        elif kind in _NUMERIC:
            plan[key] = (_NUMBER_TEXT, kind)
        elif kind in _TRIMMED:
            plan[key] = (_TRIM, kind)
        elif kind in _TIMED:
            plan[key] = (_TIME, kind)
        else:
            plan[key] = (_PLAIN, kind)
    return plan, type_name in SCALAR_PARTS


def _kept_text(value: str, check: int) -> bool:
    """Would ``primitive`` keep the text ``value`` as it is (an element checked as
    ``check``, a primitive's)?"""
    if check in (_PLAIN, _KEPT):
        return True
    if check == _TRIM:
        return bool(value.strip() == value)
    if check == _TIME:
        return _NO_ZONE.match(value) is None
    return False


def _kept_primitive(value: Any, check: int) -> bool:
    """Would ``primitive`` keep ``value`` as it is (for an element checked as ``check``)?"""
    kind = type(value)
    if kind is str:
        return _kept_text(value, check)
    return kind is bool or kind is int or kind is float


def kept_whole(value: dict[str, Any], type_name: str) -> bool:
    """Whether ``prune(value, type_name, ...)`` would give back ``value`` unchanged and drop
    nothing: every element one R4 has a place for, no primitive it would repair, no
    ``None`` or empty list it would leave out, no single value it would list or list it
    would unwrap. Conservative: False for anything it does not look into (a contained
    resource, a primitive's ``_`` extension, a dict where a primitive goes), which the
    walk then handles."""
    plan = _plan(type_name)
    if plan is None:
        return False
    checks, scalar = plan
    for key, v in value.items():
        check = checks.get(key)
        if check is None:
            return False
        how, kind = check
        t = type(v)
        if t is str:  # most elements
            if how != _PLAIN and not _kept_text(v, how):
                return False
        elif t is dict:
            if how != _NESTED or not kept_whole(v, kind):
                return False
        elif t is list:
            if not v or scalar or how == _KEPT:
                return False
            if how >= _NESTED:
                for x in v:
                    if type(x) is not dict or not kept_whole(x, kind):
                        return False
            else:
                for x in v:
                    if not _kept_primitive(x, how):
                        return False
        elif how >= _NESTED or not (t is bool or t is int or t is float):
            return False
    return True


def primitive(value: Any, type_name: str) -> Any:
    """Repair the published examples' primitive slips a consumer meets: numbers sent as
    strings, codes and URIs with stray spaces, local times without a zone."""
    if not isinstance(value, str):
        return value
    if type_name in _NUMERIC and _NUMBER.match(value.strip()):
        number = float(value) if "." in value else int(value)
        return number
    if type_name in _TRIMMED:
        return value.strip()
    if type_name in _TIMED and _NO_ZONE.match(value):
        when = datetime.fromisoformat(value).replace(tzinfo=LOCAL_TIME)
        return when.isoformat()
    return value
