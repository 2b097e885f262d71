"""Make the references of a merged record point where their targets are.

Each source namespaces its own references (``Encounter/X`` at the GP becomes
``Encounter/gp-X``), but a source may refer to a resource another source
holds, and merging folds copies of one fact into one. After merging, each
reference is resolved against the record itself:

1. ``Type/id`` naming a resource in the record stays.
2. ``Type/id`` naming a copy folded into another source's copy points at the kept copy.
3. ``Type/<source>-X`` not in the record, when ``Type/<other source>-X`` is (the same
   local id at another source of this person), points there.
4. A conditional reference ``Type?identifier=system|value`` (as Synthea writes them)
   becomes ``Type/id`` of the resource in the record with that identifier.
5. A logical reference (``identifier`` alone) gains the ``reference`` of the resource
   in the record with that identifier (of its ``type``, when given); the identifier stays.

Anything else is left as it was. Resources are copied only when something in
them changes: the sources' answers are cached and shared between requests.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from carelink.federation.fanout import OK, SourceResult
from carelink.sources.namespacing import namespaced_id

Json = dict[str, Any]

#: literal references as they appear in serialised JSON (no escapes: those take the long way)
_REFERENCE = re.compile(rb'"reference":"([^"\\\\]*)"')
#: a Reference given by identifier (an element ``identifier`` that is an object, not a list)
_LOGICAL = b'"identifier":{'


def folded_copies(
    results: Sequence[SourceResult], contributed: Sequence[list[str]]
) -> dict[str, str]:
    """``Type/id`` of each copy merge folded away -> ``Type/id`` of the copy it kept.

    ``contributed`` is ``merge``'s: per answer (each ok result, in order), the kept
    reference of each resource it sent, in the order it sent them.
    """
    out: dict[str, str] = {}
    answered = [r for r in results if r.status == OK]
    for result, kept in zip(answered, contributed, strict=True):
        for resource, ref in zip(result.resources, kept, strict=True):
            own = f"{resource['resourceType']}/{resource['id']}"
            if own != ref:
                out[own] = ref
    return out


class Resolver:
    """The targets of one merged record, and the rules above applied to a reference."""

    def __init__(
        self,
        resources: Sequence[Json],
        folded: Mapping[str, str],
        sources: Sequence[str],
        known: Collection[str] = (),
    ) -> None:
        self.present = {f"{r['resourceType']}/{r['id']}" for r in resources}
        self.present.update(known)
        self.folded = dict(folded)
        # longest first, so "social-care-x" is not read as source "social"
        self.sources = sorted(sources, key=len, reverse=True)
        self.by_identifier: dict[tuple[str, str | None, str], str] = {}
        for r in resources:
            ref = f"{r['resourceType']}/{r['id']}"
            for ident in r.get("identifier", []) if isinstance(r.get("identifier"), list) else []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    for key in (
                        (r["resourceType"], ident.get("system"), ident["value"]),
                        ("", ident.get("system"), ident["value"]),
                    ):
                        self.by_identifier.setdefault(key, ref)

    def literal(self, ref: str) -> str:
        """Rules 1-4 for a ``reference`` string."""
        if ref in self.present:
            return ref
        if ref in self.folded:
            return self.folded[ref]
        rtype, sep, query = ref.partition("?")
        if sep:
            return self._conditional(rtype, query) or ref
        parts = ref.split("/")
        if len(parts) != 2:
            return ref
        return self._elsewhere(parts[0], parts[1]) or ref

    def _conditional(self, rtype: str, query: str) -> str | None:
        if "&" in query or not query.startswith("identifier="):
            return None
        system, bar, value = query.removeprefix("identifier=").rpartition("|")
        if bar:
            return self.by_identifier.get((rtype, system or None, value))
        return next(
            (ref for (t, _, v), ref in self.by_identifier.items() if t == rtype and v == value),
            None,
        )

    def _elsewhere(self, rtype: str, rid: str) -> str | None:
        source = next((s for s in self.sources if rid.startswith(f"{s}-")), None)
        if source is None:
            return None
        local = rid[len(source) + 1 :]
        for other in self.sources:
            if other == source:
                continue
            candidate = f"{rtype}/{namespaced_id(other, local)}"
            if candidate in self.present:
                return candidate
            if candidate in self.folded:
                return self.folded[candidate]
        return None

    def logical(self, ref: Json) -> str | None:
        """Rule 5: the literal reference for an identifier-only reference, if one matches."""
        ident = ref["identifier"]
        value = ident.get("value")
        if not isinstance(value, str):
            return None
        rtype = ref.get("type")
        system = ident.get("system")
        return self.by_identifier.get(
            (
                rtype if isinstance(rtype, str) else "",
                system if isinstance(system, str) else None,
                value,
            )
        )

    def resource(self, resource: Json) -> Json:
        """``resource`` with its references resolved: itself when nothing changes.

        Literal and conditional references are rewritten in the serialised
        resource (one pass of a regular expression is many times faster than
        walking a large record in Python); only a resource holding a logical
        reference is walked.
        """
        raw = orjson.dumps(resource)
        changed = False

        def swap(match: re.Match[bytes]) -> bytes:
            nonlocal changed
            ref = match.group(1).decode()
            new = self.literal(ref)
            if new == ref:
                return match.group(0)
            changed = True
            return b'"reference":' + orjson.dumps(new)

        rewritten = _REFERENCE.sub(swap, raw)
        out = orjson.loads(rewritten) if changed else resource
        if _LOGICAL in raw:
            walked = self._value(out, top=True)
            out = out if walked is None else walked
        return out

    def _value(self, value: Any, top: bool = False) -> Any:
        """``value`` with its logical references given a literal one (a copy), or None when
        nothing in it changes."""
        if isinstance(value, dict):
            out: Json | None = None
            if "reference" not in value and isinstance(value.get("identifier"), dict) and not top:
                found = self.logical(value)
                if found is not None:
                    out = {**value, "reference": found}
            for key, v in value.items():
                if (top and key in ("id", "meta", "contained")) or not isinstance(v, dict | list):
                    continue
                sub = self._value(v)
                if sub is not None:
                    out = {**value} if out is None else out
                    out[key] = sub
            return out
        if isinstance(value, list):
            changed = [self._value(v) if isinstance(v, dict | list) else None for v in value]
            if all(c is None for c in changed):
                return None
            return [v if c is None else c for v, c in zip(value, changed, strict=True)]
        return None


def resolve(
    resources: Sequence[Json],
    folded: Mapping[str, str],
    sources: Sequence[str],
    context: Sequence[Json] = (),
    known: Collection[str] = (),
) -> list[Json]:
    """Every resource with its references resolved against the record (see the module).

    ``context`` is more of the record, fetched only so references can be resolved
    against it (the Encounters a search for Conditions refers to): targets, not output.
    ``known`` are ``Type/id`` of the person's resources the gateway has seen before
    (``resource_locations``), also targets.
    """
    resolver = Resolver([*resources, *context], folded, sources, known)
    return [resolver.resource(r) for r in resources]


def unsettled(
    resources: Sequence[Json],
    folded: Mapping[str, str],
    sources: Sequence[str],
    known: Collection[str] = (),
) -> frozenset[str]:
    """Literal ``Type/id`` references whose target is neither in the record (under any
    source's name) nor ``known``: the record must be asked for more to settle them."""
    resolver = Resolver(resources, folded, sources, known)
    out = set()
    for r in resources:
        for m in _REFERENCE.findall(orjson.dumps(r)):
            ref = m.decode()
            literal = ref.count("/") == 1 and "?" not in ref
            if literal and ref not in resolver.present and resolver.literal(ref) == ref:
                out.add(ref)
    return frozenset(out)
