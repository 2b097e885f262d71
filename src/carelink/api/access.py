"""What the caller's scopes and context let through, applied to every answer.

- A request needs a scope granting its interaction on its resource type
  (read ``r``, search ``s``), or it is refused (403).
- Granular scopes (``patient/Observation.rs?category=…|laboratory``) narrow
  what comes back: a resource passes when some granting scope's parameters
  all match it. Filtering happens before counting, so totals, paging and
  ``_summary=count`` never reveal what the caller could not read.
- A patient's token is held to that patient's own compartment.
- Only ``user/`` and ``patient/`` scopes open the live clinical API:
  ``system/`` scopes (backend services) serve ``$export``, unless the policy's
  ``systemScopesOnLiveApi`` lets them through (``deps.context`` then reads them
  as ``user/`` scopes). A ``patient/`` scope never arrives without a patient
  context: the token is refused at validation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from typing import Any

from carelink.auth import Principal
from carelink.auth.scopes import Scope, granting, parse_all
from carelink.errors import AccessDenied
from carelink.federation.query import criteria
from carelink.federation.record import Federated
from carelink.recent import same_objects

Json = dict[str, Any]


@lru_cache(maxsize=1024)
def all_scopes_of(granted: frozenset[str]) -> tuple[Scope, ...]:
    """Parsed scopes, every context (cached: tokens repeat)."""
    return parse_all(granted)


@lru_cache(maxsize=1024)
def scopes_of(granted: frozenset[str]) -> tuple[Scope, ...]:
    """The scopes that count on the live clinical API (``user/`` and ``patient/``)."""
    return tuple(s for s in parse_all(granted) if s.context != "system")


def require(caller: Principal, resource_type: str, perm: str) -> tuple[Scope, ...]:
    """The scopes granting ``perm`` on the type, or AccessDenied naming what is missing."""
    found = granting(scopes_of(caller.scopes), resource_type, perm)
    if not found:
        verb = {"r": "read", "s": "search"}.get(perm, perm)
        raise AccessDenied(f"no scope allows {verb} of {resource_type}")
    return found


def reaches(caller: Principal, person_id: str) -> bool:
    """Whether the caller's token reaches this person's record (a patient token reaches
    only its own). Where the person was looked up first, a token that does not reach
    them must get the answer an unknown person gets, not a 403 that confirms them."""
    return caller.patient is None or caller.patient == person_id


def in_compartment(caller: Principal, person_id: str) -> None:
    """A patient token reaches only its own record (403 before any lookup)."""
    if not reaches(caller, person_id):
        raise AccessDenied("this token is limited to its own patient's record")


def _passes(resource: Json, scope: Scope) -> bool:
    if not scope.filters:
        return True
    params: dict[str, list[str]] = {}
    for key, value in scope.filters:
        params.setdefault(key, []).append(value)
    crit, unknown = criteria(resource["resourceType"], params)
    return not unknown and all(c.matches(resource) for c in crit)


def passes_every(caller: Principal, resource_type: str, perm: str = "r") -> bool:
    """Does ``visible`` let every resource of this type through, whatever it holds (a
    scope granting ``perm`` on the type, or on every type, with no filters)?"""
    return any(not s.filters for s in granting(scopes_of(caller.scopes), resource_type, perm))


def visible(caller: Principal, resources: Iterable[Json], perm: str = "r") -> list[Json]:
    """The resources some scope lets the caller see (unfiltered scopes pass everything)."""
    parsed = scopes_of(caller.scopes)
    if any(s.resource == "*" and perm in s.perms and not s.filters for s in parsed):
        return list(resources)
    out = []
    for r in resources:
        grants = granting(parsed, r["resourceType"], perm)
        if any(_passes(r, s) for s in grants):
            out.append(r)
    return out


def provenance_for(
    caller: Principal, provenance: list[Json], shown: list[Json], record: Federated | None = None
) -> list[Json]:
    """Provenance the caller may read, pointing only at resources they were shown. One
    whose targets were all shown is handed back itself (read only), so its JSON is the
    one the record made; ``record``, the record ``shown`` was cut from, gives the
    resources' references made once when ``shown`` is the record's very resources."""
    if not granting(scopes_of(caller.scopes), "Provenance", "r"):
        return []
    refs: Collection[str]
    #: the record's references, and each Provenance's targets (``Federated.targets``),
    #: when ``shown`` and ``provenance`` are the record's own
    whole: frozenset[str] = frozenset()
    named: Sequence[Sequence[str]] = ()
    if record is not None and record.refs is not None and same_objects(shown, record.resources):
        refs = whole = record.refs
        if record.targets is not None and provenance is record.provenance:
            named = record.targets
    else:
        refs = {f"{r['resourceType']}/{r['id']}" for r in shown}
    out = []
    for n, p in enumerate(provenance):
        # one whose targets the record's references all hold is handed back as it is, by
        # one C-level check of the references it was made from
        if named and named[n] and whole.issuperset(named[n]):
            out.append(p)
        else:
            out.extend(_cut(p, refs))
    return out


def _cut(p: Json, refs: Collection[str]) -> list[Json]:
    """``[p]`` if every target is in ``refs``; a copy with those that are, if some; else
    none."""
    whole = p["target"]
    targets = [t for t in whole if t["reference"] in refs]
    if len(targets) == len(whole):
        return [p]
    if targets:
        return [{**p, "target": targets}]
    return []


def system_filters(caller: Principal, resource_type: str) -> list[dict[str, list[str]]] | None:
    """For an export: None if no ``system/`` scope grants read of the type; ``[]`` if one
    grants it unfiltered; else each granting scope's parameters (any may match)."""
    found = [
        s
        for s in granting(all_scopes_of(caller.scopes), resource_type, "r")
        if s.context == "system"
    ]
    if not found:
        return None
    if any(not s.filters for s in found):
        return []
    out = []
    for s in found:
        params: dict[str, list[str]] = {}
        for k, v in s.filters:
            params.setdefault(k, []).append(v)
        out.append(params)
    return out
