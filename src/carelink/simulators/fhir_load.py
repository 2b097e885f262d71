"""Sort FHIR read from files into patients' records and shared resources, and say what was not.

Each resource is placed by the FHIR R4 Patient compartment
(``carelink.simulators.compartment``): in the record of every loaded Patient
that one of its compartment references points at, however the reference is
written: ``Patient/X``, ``urn:uuid:X`` (or any Bundle ``fullUrl``), an
absolute ``http://host/fhir/Patient/X`` or a conditional
``Patient?identifier=system|value``. Those references are rewritten to
``Type/id``, as a FHIR server does when it accepts a transaction, so the
source answers with references a client can follow. Other references that
resolve to a loaded resource are rewritten the same way.

Decisions about malformed data (``Problem``s say what happened to each):

- A Bundle entry without ``resource.id`` takes the id in its ``fullUrl``
  (``urn:uuid:X`` or ``.../Type/X``): that is the identity the Bundle gives
  it and what its references use.
- A resource in a patient's record with no id at all is served as given,
  without one, and reported. The simulator stands in for a source system, and
  a source that sends a resource without an id is exactly the fault the
  gateway must survive (it skips that resource and says so). Inventing an id
  (a content hash, say) would hide the fault, give the resource an identity
  the source never had that changes whenever its content does, and which no
  client could read back at the source.
- A Patient without an id, a shared resource without an id, a duplicate
  ``Type/id`` and a resource whose patient reference points at no Patient in
  the data are skipped: nothing could ask for them.
- A resource in no patient's compartment (Practitioner, Organization,
  Location, Medication, ...) is kept as a shared resource, readable by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from carelink.simulators.compartment import compartment_references
from carelink.simulators.fhir_files import Item, Problem

Json = dict[str, Any]
Key = tuple[str, str]  # resourceType, id


@dataclass(frozen=True)
class LoadReport:
    """Counts and problems of one load; never patient data."""

    files: int
    patients: int
    in_records: int  # resources placed in at least one patient's record
    shared: int
    without_id: tuple[Problem, ...]  # served as given, without an id
    skipped: tuple[Problem, ...]

    def summary(self) -> str:
        """One line for the operator."""
        return (
            f"read {self.files} files: {self.patients} patients, {self.in_records} resources "
            f"in their records, {self.shared} shared resources; {len(self.without_id)} "
            f"served without an id; {len(self.skipped)} skipped"
        )


@dataclass
class Loaded:
    """Patients, their records and the shared resources, by id."""

    patients: dict[str, Json] = field(default_factory=dict)
    compartments: dict[str, list[Json]] = field(default_factory=dict)
    by_key: dict[Key, Json] = field(default_factory=dict)
    shared: dict[Key, Json] = field(default_factory=dict)
    identifiers: dict[tuple[str, str, str], str] = field(default_factory=dict)
    by_value: dict[tuple[str, str], str] = field(default_factory=dict)  # any system
    full_urls: dict[str, Key] = field(default_factory=dict)
    without_id: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    def find(self, rtype: str, system: str | None, value: str) -> list[str]:
        """Ids of ``rtype`` resources with identifier ``system|value`` (any system if None)."""
        hit = (
            self.identifiers.get((rtype, system, value))
            if system
            else self.by_value.get((rtype, value))
        )
        return [hit] if hit else []

    def resolve(self, ref: str) -> Key | None:
        """The loaded resource a reference points at, or None."""
        if ref in self.full_urls:
            return self.full_urls[ref]
        if ref.startswith("urn:"):
            key = ("Patient", ref.removeprefix("urn:uuid:"))
            return key if key in self.by_key else None
        if "?" in ref:
            rtype, _, query = ref.partition("?")
            rtype = rtype.rsplit("/", 1)[-1]
            idents = parse_qs(query).get("identifier", [])
            if len(idents) != 1:
                return None
            system, sep, value = idents[0].partition("|")
            hits = self.find(rtype, system if sep else None, value if sep else system)
            return (rtype, hits[0]) if hits else None
        parts = ref.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2 and (parts[-2], parts[-1]) in self.by_key:
            return parts[-2], parts[-1]
        return None


def load(items: list[Item]) -> Loaded:
    """Place every item (see the module docstring); ``Loaded`` says what went where."""
    out = Loaded()
    kept: list[Item] = []
    for item in items:
        if _index(out, item):
            kept.append(item)
    for item in kept:
        if item.resource["resourceType"] != "Patient":
            _place(out, item)
    return out


def _own_id(item: Item) -> str | None:
    rid = item.resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    url = item.full_url or ""
    if url.startswith("urn:uuid:"):
        return url.removeprefix("urn:uuid:") or None
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == item.resource["resourceType"] and parts[-1]:
        return parts[-1]
    return None


def _index(out: Loaded, item: Item) -> bool:
    """Give the item its id and note it; False if it is skipped."""
    r = item.resource
    rtype = r["resourceType"]
    if "id" in r and not isinstance(r["id"], str):
        out.skipped.append(Problem(item.where, f"{rtype} id is not a string"))
        return False
    rid = _own_id(item)
    if rid is None:
        if rtype == "Patient":
            out.skipped.append(Problem(item.where, "Patient without an id"))
            return False
        return True  # placed, or skipped, by _place
    r["id"] = rid
    key = (rtype, rid)
    if key in out.by_key:
        out.skipped.append(Problem(item.where, f"duplicate {rtype} id"))
        return False
    out.by_key[key] = r
    if item.full_url:
        out.full_urls[item.full_url] = key
    for ident in r.get("identifier", []) if isinstance(r.get("identifier"), list) else []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            out.identifiers.setdefault((rtype, str(ident.get("system", "")), ident["value"]), rid)
            out.by_value.setdefault((rtype, ident["value"]), rid)
    if rtype == "Patient":
        out.patients[rid] = r
        out.compartments.setdefault(rid, [])
    return True


def _place(out: Loaded, item: Item) -> None:
    r = item.resource
    rtype = r["resourceType"]
    for ref in _references(r):
        target = out.resolve(ref["reference"])
        if target is not None:
            ref["reference"] = f"{target[0]}/{target[1]}"
    owners: list[str] = []
    dangling = False
    for ref in compartment_references(r):
        text = ref["reference"]
        local = text.removeprefix("Patient/")
        if text.startswith("Patient/") and local in out.patients:
            if local not in owners:
                owners.append(local)
        elif _maybe_patient(ref):
            dangling = True
    if owners:
        for local in owners:
            out.compartments[local].append(r)
        if "id" not in r:
            out.without_id.append(Problem(item.where, f"{rtype} without an id: served as given"))
    elif dangling:
        out.skipped.append(Problem(item.where, f"{rtype} refers to a Patient not in the data"))
    elif "id" not in r:
        out.skipped.append(Problem(item.where, f"{rtype} without an id, in no patient's record"))
    else:
        out.shared[(rtype, r["id"])] = r


def _maybe_patient(ref: Json) -> bool:
    """Could this unresolved reference be to a Patient? (typed so, or of unknown type)"""
    if ref.get("type") == "Patient":
        return True
    text: str = ref["reference"]
    if text.startswith("#"):
        return False
    if text.startswith("urn:"):
        return ref.get("type") is None
    path = text.partition("?")[0]
    parts = path.split("/_history/")[0].rstrip("/").split("/")
    rtype = parts[-1] if "?" in text else (parts[-2] if len(parts) >= 2 else "")
    return rtype == "Patient"


def _references(value: Any) -> Iterator[Json]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for v in value.values():
            if isinstance(v, dict | list):
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)
