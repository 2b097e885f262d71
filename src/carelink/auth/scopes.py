"""SMART on FHIR scopes: the v2 grammar, v1 mapped onto it, nothing guessed.

``context/Type.perms[?param=value&...]`` where context is ``patient``,
``user`` or ``system``; Type a resource type or ``*``; perms a non-empty
subsequence of ``cruds`` in that order (``rs``, ``cud``; never ``sr`` or
``rr``). SMART v1's ``.read`` means ``rs``, ``.write`` ``cud``, ``.*``
``cruds``. A permission string out of order, or anything else malformed
that looks like a resource scope, is an error: a scope is never silently
widened or dropped. Non-resource scopes (``openid``, ``launch``,
``offline_access`` ...) are ignored here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from carelink.errors import AccessDenied

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([A-Za-z*]+)(\?.+)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
ORDER = "cruds"


class ScopeError(AccessDenied):
    """A scope string the gateway will not interpret."""


@dataclass(frozen=True)
class Scope:
    """One parsed resource scope."""

    context: str
    resource: str
    perms: frozenset[str]
    filters: tuple[tuple[str, str], ...] = ()

    def covers(self, resource_type: str, perm: str) -> bool:
        """Does this scope grant ``perm`` on ``resource_type`` (before any filter)?"""
        return perm in self.perms and self.resource in ("*", resource_type)


def parse(scope: str) -> Scope | None:
    """Parse one scope; None for non-resource scopes; ScopeError when malformed."""
    if "/" not in scope:
        return None
    m = _SCOPE.match(scope)
    if m is None:
        raise ScopeError(f"scope {scope!r} is not context/Type.permissions")
    context, resource, perms, query = m.groups()
    if perms in _V1:
        if query:
            raise ScopeError(f"scope {scope!r}: SMART v1 scopes take no parameters")
        letters = _V1[perms]
    else:
        letters = perms
        positions = [ORDER.find(c) for c in letters]
        if -1 in positions or positions != sorted(set(positions)):
            raise ScopeError(f"scope {scope!r}: permissions must be a subsequence of 'cruds'")
    filters = tuple(parse_qsl(query[1:], keep_blank_values=True)) if query else ()
    if any(not k or not v for k, v in filters):
        raise ScopeError(f"scope {scope!r}: empty search parameter")
    return Scope(context, resource, frozenset(letters), filters)


def parse_all(scopes: frozenset[str] | set[str]) -> tuple[Scope, ...]:
    """Every resource scope granted; one malformed scope refuses the whole token."""
    return tuple(s for s in (parse(x) for x in sorted(scopes)) if s is not None)


def granting(scopes: tuple[Scope, ...], resource_type: str, perm: str) -> tuple[Scope, ...]:
    """The scopes that grant ``perm`` on ``resource_type`` (each may carry filters)."""
    return tuple(s for s in scopes if s.covers(resource_type, perm))


def within(asked: Scope, allowed: Scope) -> bool:
    """Is everything ``asked`` would grant also granted by ``allowed``?

    Same context; ``allowed`` names the type or ``*``; no permission beyond
    ``allowed``'s; and ``asked`` keeps every filter ``allowed`` imposes (it may
    add more, which only narrows it).
    """
    return (
        asked.context == allowed.context
        and allowed.resource in ("*", asked.resource)
        and (asked.resource != "*" or allowed.resource == "*")
        and asked.perms <= allowed.perms
        and set(allowed.filters) <= set(asked.filters)
    )
