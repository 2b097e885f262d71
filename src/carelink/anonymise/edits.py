"""Editing a resource in place while the rules run.

The engine changes a resource through the walk's ``Node``s (``walk.py``):
a node's value is set where it lives (``set_node``); a substituted complex
value keeps what earlier rules already processed inside it (``merge``); a
processed primitive's id and extensions go (``drop_companion``); and at the
end empty elements are removed (``clean``). ``visited`` is the engine's set
of ``(id(container), key)`` places a rule has processed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from carelink.anonymise.walk import Node, below

Json = dict[str, Any]


def set_node(n: Node, value: Any) -> None:
    """Set the node's value in the resource and in the node."""
    n.container[n.key] = value
    n.value = value


def subtree(node: Node) -> Iterator[Node]:
    """The node and every node below it."""
    yield node
    yield from below(node)


def attached(node: Node) -> bool:
    """Is the node still where the walk found it? (An earlier match of the same
    substitute rule may have replaced an element holding it.)"""
    try:
        return node.container[node.key] is node.value
    except (IndexError, KeyError, TypeError):
        return False


def touched(value: Any, container: Any, key: Any, visited: set[tuple[int, Any]]) -> bool:
    """Was this value, or anything inside it, processed by an earlier rule?"""
    if (id(container), key) in visited:
        return True
    if isinstance(value, dict):
        return any(
            touched(
                item, v if isinstance(v, list) else value, i if isinstance(v, list) else k, visited
            )
            for k, v in value.items()
            for i, item in (enumerate(v) if isinstance(v, list) else [(k, v)])
        )
    return False


def merge(target: Json, replacement: Json, visited: set[tuple[int, Any]]) -> None:
    """``target`` substituted by ``replacement`` in place (see ``Methods._substitute_node``)."""
    for name in list(target):
        if name == "resourceType":
            continue
        current = target[name]
        reps = replacement.get(name)
        rep_items = reps if isinstance(reps, list) else ([] if reps is None else [reps])
        if isinstance(current, list):
            kept: list[Any] = []
            i = 0
            for index, item in enumerate(current):
                if (id(current), index) in visited:
                    kept.append(item)
                    i += 1
                elif i < len(rep_items):
                    kept.append(_merged(item, rep_items[i], current, index, visited))
                    i += 1
                elif touched(item, current, index, visited):
                    kept.append(_merged(item, {}, current, index, visited))
            kept += [copy.deepcopy(r) for r in rep_items[i:]]
            current[:] = kept  # the same list object: processed items keep their place
        elif (id(target), name) in visited:
            continue
        elif rep_items:
            target[name] = _merged(current, rep_items[0], target, name, visited)
        elif touched(current, target, name, visited):
            target[name] = _merged(current, {}, target, name, visited)
        else:
            del target[name]
    for name, reps in replacement.items():
        if name not in target:
            target[name] = copy.deepcopy(reps)


def _merged(
    value: Any, replacement: Any, container: Any, key: Any, visited: set[tuple[int, Any]]
) -> Any:
    if isinstance(value, dict):
        if isinstance(replacement, dict):
            merge(value, replacement, visited)
            return value
        if touched(value, container, key, visited):
            # A replacement of another shape: keep only what earlier rules processed
            # (failing closed, never the untouched rest of the element).
            merge(value, {}, visited)
            return value
    elif touched(value, container, key, visited):
        return value
    return copy.deepcopy(replacement) if replacement != {} else None


def drop_companion(node: Node, visited: set[tuple[int, Any]]) -> None:
    """A processed primitive's id and extensions go, except what an earlier rule
    already processed (``keep`` included); then they count as processed."""
    inside = list(subtree(node))
    if isinstance(node.value, dict) and (id(node.container), node.key) not in visited:
        if touched(node.value, node.container, node.key, visited):
            merge(node.value, {}, visited)
        else:
            set_node(node, None)
    for d in inside:
        visited.add((id(d.container), d.key))


def clean(obj: Any) -> Any:
    """Remove empty elements bottom-up (resources themselves stay); a repeating
    primitive and its ``_name`` companion list stay aligned. An extension whose
    ``url`` was redacted goes whole: without it the rest (say, the year a
    partial-date redaction left) means nothing and is not valid FHIR."""
    if isinstance(obj, dict):
        for k in list(obj):
            if k not in obj:
                continue
            v = obj[k]
            if isinstance(v, list) and _paired(obj, k):
                _clean_pair(obj, k.removeprefix("_"))
                continue
            clean(v)
            if k in ("extension", "modifierExtension") and isinstance(v, list):
                v[:] = [e for e in v if not (isinstance(e, dict) and "url" not in e)]
            if v is None or v == {} or v == [] or v == "":
                del obj[k]
        return obj
    if isinstance(obj, list):
        obj[:] = [x for x in (clean(v) for v in obj) if not (x is None or x == {} or x == [])]
    return obj


def _paired(obj: Json, key: str) -> bool:
    name = key.removeprefix("_")
    return isinstance(obj.get(name), list) and isinstance(obj.get("_" + name), list)


def _clean_pair(obj: Json, name: str) -> None:
    """``given`` and ``_given``: drop the places where both are empty, keep the rest
    aligned (nulls where only one side has something)."""
    values, extras = obj[name], obj["_" + name]
    size = max(len(values), len(extras))
    vals = [values[i] if i < len(values) else None for i in range(size)]
    exts = [clean(extras[i]) if i < len(extras) else None for i in range(size)]
    exts = [None if e in (None, {}, []) else e for e in exts]
    kept = [i for i in range(size) if vals[i] is not None or exts[i] is not None]
    vals, exts = [vals[i] for i in kept], [exts[i] for i in kept]
    del obj[name], obj["_" + name]
    if any(e is not None for e in exts):
        obj[name], obj["_" + name] = vals, exts
    elif vals:
        obj[name] = vals
