"""The gateway's merged Patient: every element any source holds, by a stated rule.

Sources are taken in preference order (``PREFERRED``: the GP holds the
registration, then the hospital, community, social care; then local id).
"Preferred" below means the first source in that order that holds the element.
Lists are merged with the preferred source's entries first, and an entry equal
to one already taken (compared as shown) is not repeated.

=====================  ==========================================================
element                rule
=====================  ==========================================================
id, meta.source,       the gateway's own (keyed hash id, gateway source, build time)
meta.lastUpdated
meta.security,         union (system|code); a source's sensitivity label is never lost
meta.tag
identifier             the index's valid NHS number first (the source's own entry for
                       it, with any extensions, when one holds it); then every source's
                       identifiers, deduplicated on system|value; then each source's
                       local id. An NHS number the index did not accept (bad check
                       digit) is left out and reported as a conflict.
active                 true if any source's record is active; false only if every source
                       that says says false
name                   union (whole HumanName), preferred source's first
telecom                union (system|value, spaces ignored)
gender                 preferred; disagreement is a conflict
birthDate              preferred; disagreement is a conflict
deceased[x]            any source saying deceased wins (the preferred dateTime among
                       them, else ``deceasedBoolean: true``); a source silent or saying
                       alive is a conflict, as are different dates of death
address                union (whole Address)
maritalStatus          preferred; different codes are a conflict
multipleBirth[x]       preferred; sources disagreeing on multiple or single birth is a
                       conflict
photo                  union (whole Attachment)
contact                union (whole contact: next of kin, carers)
communication          union (language codings)
generalPractitioner    union (reference)
managingOrganization   preferred
link                   the gateway's ``seealso`` to every source's Patient (sources'
                       own links are references inside those systems)
extension              union (whole Extension; e.g. UK Core ethnic category), plus one
                       ``source-conflict`` extension per conflict
modifierExtension      union (whole Extension): never dropped, it changes meaning
contained              union, each id prefixed with its source (and that source's
                       ``#`` references rewritten) so two sources never collide
language,              preferred
implicitRules
text                   left out: one source's narrative would misdescribe the merge
=====================  ==========================================================

A conflict is shown on the Patient as an extension
(``CONFLICT_URL``: ``element``, then ``agrees`` / ``disagrees`` naming
sources), so a clinician sees that sources disagree and where to look, without
the Patient carrying any value it does not already hold.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import SourcePerson, local_id_system
from carelink.sources.namespacing import namespaced_id

Json = dict[str, Any]
GATEWAY_SOURCE = "urn:carelink:gateway"
CONFLICT_URL = "https://carelink.example/StructureDefinition/source-conflict"
#: the source whose demographics win when several hold the person (registration)
PREFERRED = ("gp", "acute", "community", "social-care")


@dataclass(frozen=True)
class Conflict:
    """Sources disagree on an element: which agree with the merged value, which not."""

    element: str
    agrees: tuple[str, ...]
    disagrees: tuple[str, ...]

    def extension(self) -> Json:
        """The ``source-conflict`` extension saying so."""
        parts: list[Json] = [{"url": "element", "valueString": self.element}]
        parts += [{"url": "agrees", "valueString": s} for s in self.agrees]
        parts += [{"url": "disagrees", "valueString": s} for s in self.disagrees]
        return {"url": CONFLICT_URL, "extension": parts}


@dataclass(frozen=True)
class MergedPatient:
    """The merged Patient and the conflicts found making it."""

    patient: Json
    conflicts: tuple[Conflict, ...]


def rank(p: SourcePerson) -> tuple[int, str, str]:
    """Preference order of a source's record."""
    order = PREFERRED.index(p.source) if p.source in PREFERRED else len(PREFERRED)
    return order, p.source, p.local_id


def _key(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _union(lists: Sequence[list[Any]], key: Callable[[Any], Hashable] = _key) -> list[Any]:
    out: list[Any] = []
    seen: set[Hashable] = set()
    for items in lists:
        for item in items:
            k = key(item)
            if k not in seen:
                seen.add(k)
                out.append(item)
    return out


def _codes(concept: Any) -> Hashable:
    if not isinstance(concept, dict):
        return None
    codes = frozenset((c.get("system"), c.get("code")) for c in concept.get("coding", []))
    return codes or concept.get("text")


def _multiple(p: Json) -> Hashable:
    if "multipleBirthInteger" in p:
        return int(p["multipleBirthInteger"]) > 1
    return p.get("multipleBirthBoolean")


def _getter(element: str) -> Callable[[Json], Hashable]:
    def get(p: Json) -> Hashable:
        value: Hashable = p.get(element)
        return value

    return get


def _deceased(p: Json) -> bool:
    return bool(p.get("deceasedBoolean")) or "deceasedDateTime" in p


def _conflict(
    element: str, views: Sequence[tuple[str, Hashable]], merged: Hashable
) -> Conflict | None:
    said = [(s, v) for s, v in views if v is not None]
    if len({v for _, v in said}) < 2:
        return None
    agrees = tuple(dict.fromkeys(s for s, v in said if v == merged))
    disagrees = tuple(dict.fromkeys(s for s, v in said if v != merged and s not in agrees))
    return Conflict(element, agrees, disagrees)


def _localise_contained(source: str, patient: Json) -> Json:
    """Prefix contained ids with the source, rewriting that source's ``#`` references."""
    ids = {str(c.get("id")) for c in patient.get("contained", [])}
    if not ids:
        return patient

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items()}
            ref = out.get("reference")
            if isinstance(ref, str) and ref.startswith("#") and ref[1:] in ids:
                out["reference"] = f"#{source}-{ref[1:]}"
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    copy: Json = walk(patient)
    for c in copy["contained"]:
        c["id"] = f"{source}-{c.get('id')}"
    return copy


def _identifiers(
    pats: Sequence[tuple[str, Json]], members: Sequence[SourcePerson], nhs: str | None
) -> tuple[list[Json], Conflict | None]:
    all_ids = [i for _, p in pats for i in p.get("identifier", []) if isinstance(i, dict)]
    own = [i for i in all_ids if i.get("system") == NHS_NUMBER_SYSTEM and i.get("value") == nhs]
    first = own[:1] or ([{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else [])
    others = [i for i in all_ids if i.get("system") != NHS_NUMBER_SYSTEM]
    local = [{"system": local_id_system(m.source), "value": m.local_id} for m in members]
    out = _union([first, others, local], key=lambda i: (i.get("system"), i.get("value")))
    views = [
        (s, i.get("value") == nhs)
        for s, p in pats
        for i in p.get("identifier", [])
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM
    ]
    if all(ok for _, ok in views):
        return out, None
    agrees = tuple(dict.fromkeys(s for s, ok in views if ok))
    disagrees = tuple(dict.fromkeys(s for s, ok in views if not ok and s not in agrees))
    return out, Conflict("identifier:nhsNumber", agrees, disagrees)


def merge_patient(
    pid: str, members: Sequence[SourcePerson], nhs: str | None, built_at: str
) -> MergedPatient:
    """The gateway's Patient for one person (see the module docstring for the rules)."""
    ranked = sorted(members, key=rank)
    pats = [(m.source, _localise_contained(m.source, m.patient)) for m in ranked]
    conflicts: list[Conflict] = []

    def first(element: str) -> Any:
        for _, p in pats:
            if element in p:
                return p[element]
        return None

    def union(element: str, key: Callable[[Any], Hashable] = _key) -> list[Any]:
        # most elements are absent, or one source's list of one: no keys to compare then
        lists = [held for _, p in pats if (held := p.get(element))]
        if not lists:
            return []
        if key is _key and len(lists) == 1 and type(lists[0]) is list and len(lists[0]) == 1:
            return [lists[0][0]]
        return _union(lists, key)

    def check(element: str, view: Callable[[Json], Hashable], merged: Hashable) -> None:
        if len(pats) < 2:  # one source agrees with itself (its view was taken for merged)
            return
        found = _conflict(element, [(s, view(p)) for s, p in pats], merged)
        if found:
            conflicts.append(found)

    identifiers, nhs_conflict = _identifiers(pats, ranked, nhs)
    if nhs_conflict:
        conflicts.append(nhs_conflict)
    meta: Json = {"source": GATEWAY_SOURCE, "lastUpdated": built_at}
    for part in ("security", "tag"):
        labels = _union(
            [(p.get("meta") or {}).get(part) or [] for _, p in pats],
            key=lambda c: (c.get("system"), c.get("code")),
        )
        if labels:
            meta[part] = labels
    out: Json = {"resourceType": "Patient", "id": pid, "meta": meta}
    for element in ("implicitRules", "language"):
        if (value := first(element)) is not None:
            out[element] = value
    contained = union("contained")
    if contained:
        out["contained"] = contained
    out["identifier"] = identifiers
    actives = [p["active"] for _, p in pats if isinstance(p.get("active"), bool)]
    if actives:
        out["active"] = any(actives)
    lists: dict[str, Callable[[Any], Hashable]] = {
        "name": _key,
        "telecom": lambda t: (t.get("system"), str(t.get("value", "")).replace(" ", "")),
    }
    for element, key in lists.items():
        if values := union(element, key):
            out[element] = values
    for element in ("gender", "birthDate"):
        if (value := first(element)) is not None:
            out[element] = value
            check(element, _getter(element), value)
    _merge_deceased(out, pats, check)
    if addresses := union("address"):
        out["address"] = addresses
    if (marital := first("maritalStatus")) is not None:
        out["maritalStatus"] = marital
        check("maritalStatus", lambda p: _codes(p.get("maritalStatus")), _codes(marital))
    holder = next((p for _, p in pats if _multiple(p) is not None), None)
    if holder is not None:
        kind = "Integer" if "multipleBirthInteger" in holder else "Boolean"
        out["multipleBirth" + kind] = holder["multipleBirth" + kind]
        check("multipleBirth", _multiple, _multiple(holder))
    for element, key in (
        ("photo", _key),
        ("contact", _key),
        ("communication", lambda c: _codes(c.get("language"))),
        ("generalPractitioner", lambda r: r.get("reference") or _key(r)),
    ):
        if values := union(element, key):
            out[element] = values
    if (org := first("managingOrganization")) is not None:
        out["managingOrganization"] = org
    refs = ["Patient/" + namespaced_id(m.source, m.local_id) for m in ranked]
    out["link"] = [{"other": {"reference": r}, "type": "seealso"} for r in refs]
    extensions = union("extension") + [c.extension() for c in conflicts]
    if extensions:
        out["extension"] = extensions
    if modifiers := union("modifierExtension"):
        out["modifierExtension"] = modifiers
    return MergedPatient(out, tuple(conflicts))


def _merge_deceased(
    out: Json,
    pats: Sequence[tuple[str, Json]],
    check: Callable[[str, Callable[[Json], Hashable], Hashable], None],
) -> None:
    """Any source saying deceased wins; disagreement on it or on the date is a conflict."""
    dead = [p for _, p in pats if _deceased(p)]
    if not dead:
        if any("deceasedBoolean" in p for _, p in pats):
            out["deceasedBoolean"] = False
        return
    date = next((p["deceasedDateTime"] for p in dead if "deceasedDateTime" in p), None)
    if date is not None:
        out["deceasedDateTime"] = date
        check("deceasedDateTime", lambda p: p.get("deceasedDateTime"), date)
    else:
        out["deceasedBoolean"] = True
    check("deceased", _deceased, True)
