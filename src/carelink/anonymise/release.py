"""The anonymised release: an allow-list of coded facts, k^m-anonymous against a stated intruder.

The adversary (the ICO's "motivated intruder") knows a person's sex, age
and postcode, and up to ``m`` facts about their care: a coded condition,
procedure, admission, test, medicine or immunisation with its date. The
release is built so that such a person can never be singled out:

- **Allow-list, not block-list.** Of each clinical resource only its codes
  (``system`` and ``code`` from standard code systems: no display, no text, no
  local codes), a few fixed-vocabulary statuses and the *year* of its clinical
  date are kept; an Observation's quantity becomes an open-ended band of the
  released population's values (``valueRange``). Every other element, every
  primitive extension (``_x``), every reference but the subject, ``meta``, ids
  and narrative is dropped. A new element in a source feed can never leak by
  default, and a type that is not listed is not released at all.
- **One fact once.** What is left of a resource is a *fact*; a person's
  identical facts are released once (so the count of identical events in a
  year is not a quasi-identifier).
- **Fresh ids.** Every released resource, Patient included, gets a random id
  made for this release only: two releases (or an anonymised and a
  pseudonymised extract) share no id and cannot be joined row by row.
- **k^m-anonymity.** Within each equivalence class of the released
  Patient (sex, age band and postcode area, generalised by
  ``disclosure.protect`` until every class holds ``k`` people), every set of at
  most ``m`` facts held by a person is held by at least ``k`` people of the
  class. Facts are suppressed person by person (the rarer fact of an
  offending set is removed from the few who hold it) until that holds, so
  an intruder who knows the released attributes and any ``m`` facts always
  faces at least ``k`` candidates. Facts are the released content in full,
  so an intruder who knows less (a month instead of a year, a code without
  the status) faces at least as many.
- **No homogeneous class** (distinct 2-diversity on diagnoses): a
  diagnosis held by every member of a class would be learnt about anyone
  known to be in it, so it is suppressed in that class. A diagnosis is a
  code: it is suppressed however each member's fact records it (its year,
  its category, the other codes beside it).

What is *not* covered, and said in the risk report: the number of distinct
facts a person has is visible (one resource per fact); an intruder who
knows more than ``m`` facts; attribute inference from ``m`` known facts.
``intruder.attack`` measures the result against the extract itself.

Here: a resource reduced to its fact (``reduce``, ``Draft``; what each type
keeps is its ``shapes.Shape``), the value bands (``Bands``) and the released
resource (``resource``, ``fresh_id``). ``km_anonymity.enforce`` applies the
k^m and diversity rules to every person's facts.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import orjson

from carelink.anonymise.shapes import (
    SHAPES,
    is_standard,
    put_at,
    standard_coding,
    standard_concept,
    standard_concepts,
    value_at,
    year_of,
)

Json = dict[str, Any]

SECURITY = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "ANONYED",
    "display": "anonymized",
}

#: the levels of generalisation of a fact, finest first (``Draft.ladder``)
LEVELS = ("as recorded", "without its year", "without its value band", "its code alone")


@dataclass(frozen=True)
class Draft:
    """A resource reduced to its released content, before its value is banded."""

    rtype: str
    content: Json
    quantity: tuple[str, float] | None = None  #: (band key, value) of an Observation

    def fact(self, bands: Bands) -> bytes:
        """The canonical released content: what k^m-anonymity counts."""
        return orjson.dumps([self.rtype, self.finished(bands)], option=orjson.OPT_SORT_KEYS)

    def ladder(self, bands: Bands) -> list[bytes]:
        """The fact at each level of generalisation (``LEVELS``): as is, without its
        year, without its value band too, its main code alone (a level that changes
        nothing repeats the one before, so levels line up across facts)."""
        shape = SHAPES[self.rtype]
        body = self.finished(bands)
        undated = _without(body, shape.year_as)
        steps = [
            body,
            undated,
            {k: v for k, v in undated.items() if k != "valueRange"},
            _only(body, shape.code),
        ]
        return [orjson.dumps([self.rtype, b], option=orjson.OPT_SORT_KEYS) for b in steps]

    def finished(self, bands: Bands) -> Json:
        """The released content with its value band (if any)."""
        body = {k: v for k, v in self.content.items() if k != "_unit"}
        if self.quantity is not None:
            band = bands.band(*self.quantity)
            if band is not None:
                body["valueRange"] = band
        return body


def reduce(resource: Json) -> Draft | None:
    """The allow-listed content of one clinical resource; ``None`` when nothing of it
    may be released (a type not listed, or no standard code for its fact)."""
    rtype = resource.get("resourceType")
    shape = SHAPES.get(str(rtype))
    if shape is None:
        return None
    main = value_at(resource, shape.code)
    main_out = standard_concepts(main) if isinstance(main, list) else standard_concept(main)
    if not main_out:
        return None
    out: Json = {}
    put_at(out, shape.code, main_out)
    for path in shape.coded:
        got = standard_concepts(value_at(resource, path))
        if got:
            put_at(out, path, got)
    for path in shape.codings:
        got = standard_coding(value_at(resource, path))
        if got is not None:
            put_at(out, path, got)
    for path in shape.plain:
        value = value_at(resource, path)
        if isinstance(value, str) and value.isascii() and 0 < len(value) <= 32:
            put_at(out, path, value)
    for path in shape.when:
        year = year_of(value_at(resource, path))
        if year is not None:
            put_at(out, shape.year_as, year)
            break
    quantity = None
    if shape.banded:
        q = resource.get("valueQuantity")
        if isinstance(q, dict) and isinstance(q.get("value"), int | float):
            unit = q.get("code") if is_standard(q.get("system")) or q.get("system") else None
            unit = unit or q.get("unit")
            if isinstance(unit, str) and len(unit) <= 32:
                key = orjson.dumps([main_out, unit], option=orjson.OPT_SORT_KEYS).decode()
                quantity = (key, float(q["value"]))
                out["_unit"] = unit  # kept for the band, removed when finished
    return Draft(str(rtype), out, quantity)


@dataclass
class Bands:
    """Open-ended quantile bands of each (code, unit)'s released values.

    Edges are quantiles of the values, rounded to three significant figures,
    never the lowest or the highest value itself (so with fewer than three
    values there are no bands), and the outermost bands are open (no low, or
    no high), so no released number is one person's exact extreme value.
    """

    per: int = 5
    _values: dict[str, list[float]] = field(default_factory=dict)
    _edges: dict[str, list[float]] = field(default_factory=dict)
    _units: dict[str, str] = field(default_factory=dict)

    def add(self, draft: Draft) -> None:
        """Count one draft's value."""
        if draft.quantity is not None:
            key, value = draft.quantity
            self._values.setdefault(key, []).append(value)
            self._units[key] = str(draft.content.get("_unit", ""))

    def fix(self) -> None:
        """Compute the edges (after every value is added)."""
        for key, values in self._values.items():
            values.sort()
            n = len(values)
            edges: list[float] = []
            for i in range(1, self.per):
                at = i * n // self.per
                if not 1 <= at <= n - 2:  # never the lowest or the highest value itself
                    continue
                q = _round3(values[at])
                if not edges or q > edges[-1]:
                    edges.append(q)
            self._edges[key] = edges
        self._values.clear()

    def band(self, key: str, value: float) -> Json | None:
        """The band holding ``value`` as a FHIR Range."""
        edges = self._edges.get(key)
        if edges is None:
            return None
        unit = self._units.get(key, "")
        i = bisect_right(edges, value)
        out: Json = {}
        if i > 0:
            out["low"] = {"value": edges[i - 1], "unit": unit}
        if i < len(edges):
            out["high"] = {"value": edges[i], "unit": unit}
        return out or None


def _only(body: Json, path: str) -> Json:
    head = path.split(".")[0]
    return {head: body[head]} if head in body else {}


def _without(body: Json, path: str) -> Json:
    head, _, rest = path.partition(".")
    if head not in body:
        return body
    out = dict(body)
    if rest and isinstance(out[head], dict):
        inner = _without(out[head], rest)
        if inner:
            out[head] = inner
        else:
            del out[head]
    else:
        del out[head]
    return out


def _round3(x: float) -> float:
    if x == 0:
        return 0.0
    return float(f"{x:.3g}")


def project(fact: bytes) -> list[tuple[str, str, str]]:
    """What an intruder could know of a fact: its type, a code and its year (one
    projection per code of its main element; the first is the fact's own)."""
    rtype, content = orjson.loads(fact)
    shape = SHAPES[rtype]
    year = value_at(content, shape.year_as) or ""
    main = value_at(content, shape.code)
    concepts = main if isinstance(main, list) else [main]
    out = [
        (rtype, f"{c['system']}|{c['code']}", str(year))
        for concept in concepts
        for c in concept["coding"]
    ]
    return out


def fresh_id() -> str:
    """A random id for one released resource (never derived from anything)."""
    return str(uuid.uuid4())


def resource(rtype: str, content: Json, patient_id: str, shape_subject: str) -> Json:
    """A released resource: fresh id, the content, the subject, the label."""
    return {
        "resourceType": rtype,
        "id": fresh_id(),
        "meta": {"security": [dict(SECURITY)]},
        **content,
        shape_subject: {"reference": f"Patient/{patient_id}"},
    }


def subject_of(rtype: str) -> str:
    """The element naming the patient in a released resource of ``rtype``."""
    return SHAPES[rtype].subject
