"""A GP Connect structured record (an STU3 ``collection`` Bundle) read as R4 resources.

Every entry of the Bundle gets exactly one fate, kept in ``Reading.fates``:

- **converted** to R4 (``sources.stu3``), including the consultation, topic and
  category Lists, which carry the structure of a consultation;
- **folded**: the section Lists (Allergies, Medications ...), which only group the
  answer: their warnings (``ListWarningCode``, ``emptyReason``, ``note``) become
  notes and their contained resources (e.g. resolved allergies) are taken out
  and converted in their own right; the provider's warning ``OperationOutcome``s
  (a parameter it does not know, an area switched off) become notes; a second
  copy of a resource already read is folded into the first;
- **skipped**, and named in ``Reading.skipped``: an entry with no resource, no
  id, or a type R4 does not have.

Entries are counted from 0 in the Bundle's order. Published examples put a
resource straight in the entry (no ``entry.resource``); such an entry is read as
the resource it plainly is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carelink.errors import SourceBadPayload
from carelink.fhir.gpconnect import (
    LIST_WARNING_URL,
    SECONDARY_LISTS,
    SECTION_LISTS,
    SPINE_CODE_SYSTEMS,
)
from carelink.sources.base import Json
from carelink.sources.r4_prune import is_r4_type
from carelink.sources.stu3 import PATIENT_LINK, RENAMED_TYPES, missing, to_r4


@dataclass
class Reading:
    """What a structured record gave, what became of each entry, and what was said."""

    resources: list[Json] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (entry, fate): ``"entry 3 AllergyIntolerance/a1"`` -> ``"converted"`` |
    #: ``"folded: ..."`` | ``"skipped: ..."``
    fates: list[tuple[str, str]] = field(default_factory=list)
    #: element paths R4 had no place for, per converted resource
    dropped: list[str] = field(default_factory=list)


def _codes(value: Json | None) -> set[str]:
    return {str(c.get("code")) for c in ((value or {}).get("coding") or []) if isinstance(c, dict)}


def is_section_list(r: Json) -> bool:
    """A List that only groups the answer (a clinical area's, or a secondary list)."""
    codes = _codes(r.get("code"))
    systems = {c.get("system") for c in (r.get("code") or {}).get("coding", [])}
    return bool(codes & set(SECTION_LISTS)) or SECONDARY_LISTS in systems or "id" not in r


def list_warnings(r: Json) -> list[str]:
    """What a List says about its completeness: warning codes, empty reason, notes."""
    title = r.get("title") or "List"
    out = [
        f"{title}: warning {e.get('valueCode')}"
        for e in r.get("extension", [])
        if isinstance(e, dict) and e.get("url") == LIST_WARNING_URL
    ]
    reason = r.get("emptyReason")
    if isinstance(reason, dict):
        said = reason.get("text") or ", ".join(sorted(_codes(reason)))
        out.append(f"{title}: empty ({said})")
    out += [
        f"{title}: {n['text']}" for n in r.get("note", []) if isinstance(n, dict) and n.get("text")
    ]
    return out


def outcome_warnings(r: Json) -> list[str]:
    """The provider's in-Bundle warnings (``NOT_IMPLEMENTED: includeX is an unrecognised
    parameter``)."""
    out = []
    for i in r.get("issue", []):
        codings = (i.get("details") or {}).get("coding") or [{}]
        code = next((c.get("code") for c in codings if c.get("system") in SPINE_CODE_SYSTEMS), None)
        text = (i.get("details") or {}).get("text") or i.get("diagnostics") or ""
        out.append(f"{i.get('severity', 'warning')} {code or i.get('code')}: {text}".strip())
    return out


def read_structured(doc: Json, source: str) -> Reading:
    """The R4 resources of structured record ``doc``, every entry accounted for."""
    if doc.get("resourceType") != "Bundle":
        raise SourceBadPayload(source, f"expected a Bundle, got {doc.get('resourceType')}")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise SourceBadPayload(source, "Bundle.entry is not a list")
    out = Reading()
    seen: dict[tuple[str, str], str] = {}
    patient = next(
        (
            r
            for e in entries
            if isinstance(e, dict)
            and isinstance(r := e.get("resource", e), dict)
            and r.get("resourceType") == "Patient"
            and isinstance(r.get("id"), str)
        ),
        None,
    )
    own = {"reference": f"Patient/{patient['id']}"} if patient else None

    def take(r: Json, where: str, n: int | str) -> None:
        rtype = str(r["resourceType"])
        key = (RENAMED_TYPES.get(rtype, rtype), str(r["id"]).removeprefix(rtype + "/"))
        if key in seen:
            out.fates.append((where, f"folded: a copy of {seen[key]}"))
            return
        seen[key] = where
        converted = to_r4(r)
        link = PATIENT_LINK.get(converted.resource["resourceType"])
        if link and own and link not in converted.resource:
            converted.resource[link] = dict(own)
        lacking = missing(converted.resource)
        if lacking:
            why = f"no {', '.join(lacking)}"
            out.skipped.append(f"{rtype} entry {n}: {why}")
            out.fates.append((where, f"skipped: {why}"))
            return
        out.resources.append(converted.resource)
        out.dropped += [f"{where}: {d}" for d in converted.dropped]
        out.fates.append((where, "converted"))

    for i, e in enumerate(entries):
        r = e.get("resource") if isinstance(e, dict) else None
        if r is None and isinstance(e, dict) and "resourceType" in e:
            r = e  # published quirk: the resource straight in the entry
        rtype = r.get("resourceType") if isinstance(r, dict) else None
        where = f"entry {i} {rtype}/{r.get('id')}" if isinstance(r, dict) else f"entry {i}"
        if not isinstance(r, dict):
            out.skipped.append(f"entry {i}: no resource")
            out.fates.append((where, "skipped: no resource"))
        elif not isinstance(rtype, str) or not rtype:
            out.skipped.append(f"entry {i}: no resourceType")
            out.fates.append((where, "skipped: no resourceType"))
        elif rtype == "OperationOutcome":
            out.notes += outcome_warnings(r)
            out.fates.append((where, "folded: provider warnings into the source's notes"))
        elif rtype == "List" and is_section_list(r):
            out.notes += list_warnings(r)
            for c in r.get("contained", []):
                if isinstance(c, dict) and c.get("resourceType") and c.get("id"):
                    take(c, f"{where} contained {c['resourceType']}/{c['id']}", f"{i} (contained)")
            out.fates.append((where, f"folded: section List {r.get('title', '')!r}"))
        elif not isinstance(r.get("id"), str) or not r["id"]:
            out.skipped.append(f"{rtype} entry {i}: no id")
            out.fates.append((where, "skipped: no id"))
        elif not is_r4_type(RENAMED_TYPES.get(rtype, rtype)):
            out.skipped.append(f"{rtype} entry {i}: no R4 counterpart")
            out.fates.append((where, "skipped: no R4 counterpart"))
        else:
            take(r, where, i)
    _hoisted_refs(out.resources)
    return out


def _hoisted_refs(resources: list[Json]) -> None:
    """References to a folded List's contained resources (``#id``) name them directly."""
    by_id = {str(r["id"]): r["resourceType"] for r in resources}

    def walk(value: object) -> None:
        if isinstance(value, dict):
            ref = value.get("reference")
            if isinstance(ref, str) and ref.startswith("#") and ref[1:] in by_id:
                value["reference"] = f"{by_id[ref[1:]]}/{ref[1:]}"
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for r in resources:
        if "contained" not in r:
            walk(r)
