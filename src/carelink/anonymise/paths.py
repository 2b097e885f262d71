"""Which nodes of a resource a rule's path reaches.

A rule's path is an optional resource type and an expression
(``Patient.name``, ``nodesByType('HumanName')``, ``Resource.meta``). A
type alone reaches the resource itself; ``nodesByType``/``nodesByName``
(with at most one child name) and plain dotted paths are matched on the
walk's nodes directly; anything else is evaluated by fhirpathpy on a marked
copy of the resource and mapped back to the nodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models

from carelink.anonymise.walk import Node, walk

Json = dict[str, Any]

_NODES_BY = re.compile(
    r"^nodesBy(Type|Name)\(['\"]([A-Za-z0-9_]+)['\"]\)(?:\.([A-Za-z][A-Za-z0-9]*))?$"
)
_NODES_BY_PREFIX = re.compile(r"^nodesBy(Type|Name)\(['\"]([A-Za-z0-9_]+)['\"]\)")
_DOTTED = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")
_SPLIT = re.compile(r"^(?P<type>[A-Z][a-zA-Z]*)?(\.)?(?P<expr>.*?)$")
MARK = "__carelink_node"


def split(path: str) -> tuple[str, str]:
    """A rule's path as its resource type (or ``""``) and the expression after it."""
    m = _SPLIT.match(path)
    if m is None:  # pragma: no cover - the pattern matches any string
        return "", path
    return m.group("type") or "", m.group("expr") or ""


class Paths:
    """FHIRPath for one engine: each distinct expression is compiled once."""

    def __init__(self) -> None:
        self._compiled: dict[str, Callable[..., list[Any]]] = {}

    def evaluate(
        self, expression: str, data: Any, variables: dict[str, Any] | None = None
    ) -> list[Any]:
        """Evaluate FHIRPath, compiling each distinct expression once."""
        fn = self._compiled.get(expression)
        if fn is None:
            fn = fhirpath_compile(expression, models["r4"])
            self._compiled[expression] = fn
        return list(fn(data, variables or {}))

    def match(
        self, resource: Json, nodes: list[Node], rtype: str, path: str, rule_type: str, expr: str
    ) -> list[Node]:
        """The nodes of ``resource`` (walked as ``nodes``) that the rule's ``path``
        (``split`` into ``rule_type`` and ``expr``) reaches."""
        if rule_type and not expr:  # a resource-type rule: the resource itself
            return [Node({"": resource}, "", resource, rtype, rtype, "")]
        if rule_type and _NODES_BY_PREFIX.match(expr):  # Patient.nodesByType('HumanName')
            path = expr
        m = _NODES_BY.match(path)
        if m:
            kind, name, child = m.groups()
            hits = [n for n in nodes if (n.type if kind == "Type" else n.element) == name]
            if child:  # the child's container is its parent, or for a repeat the list in it
                parents = {id(h.value) for h in hits}
                parents |= {id(h.value.get(child)) for h in hits if isinstance(h.value, dict)}
                hits = [c for c in nodes if id(c.container) in parents and c.element == child]
            return hits
        if _DOTTED.match(expr):
            return _dotted(nodes, expr)
        return self._fhirpath(resource, path, nodes)

    def _fhirpath(self, resource: Json, path: str, nodes: list[Node]) -> list[Node]:
        """General expressions, evaluated by fhirpathpy on a marked copy and mapped back.

        Results that are elements map back through the mark; primitive results
        (``...where(...).value``) through their parent and the last name.
        """
        marked: Json = orjson.loads(orjson.dumps(resource))
        originals = [n for n in nodes if isinstance(n.value, dict)]
        copies = [n for n in walk(marked) if n.type != "Resource" and isinstance(n.value, dict)]
        for i, dup in enumerate(copies):
            dup.value[MARK] = i

        def run(expression: str) -> list[Any]:
            prefix = _NODES_BY_PREFIX.match(expression)
            if prefix is None:
                return self.evaluate(expression, marked)
            kind, name = prefix.groups()
            rest = expression[prefix.end() :].lstrip(".")
            starts = [d.value for d in copies if (d.type if kind == "Type" else d.element) == name]
            if not rest:
                return starts
            out: list[Any] = []
            for start in starts:
                out += self.evaluate("%node." + rest, {}, {"node": start})
            return out

        def nodes_of(results: list[Any]) -> list[Node]:
            return [originals[r[MARK]] for r in results if isinstance(r, dict) and MARK in r]

        results = run(path)
        hits = nodes_of(results)
        if results and not hits and "." in path:
            parent, _, last = path.rpartition(".")
            if _DOTTED.match(last):
                holders = {id(h.value) for h in nodes_of(run(parent))}
                hits = [
                    n for n in nodes if id(n.container) in holders and _element_is(n.element, last)
                ]
        return hits


def _element_is(element: str, name: str) -> bool:
    return element == name or (
        element.startswith(name) and element[len(name) : len(name) + 1].isupper()
    )


def _dotted(nodes: list[Node], expr: str) -> list[Node]:
    wanted = expr.split(".")
    hits = []
    for n in nodes:
        parts = n.path.split(".")[1:]
        if len(parts) != len(wanted):
            continue
        if all(_element_is(p, w) for p, w in zip(parts, wanted, strict=True)):
            hits.append(n)
    return hits
