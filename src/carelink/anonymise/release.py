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
  known to be in it, so it is suppressed in that class.

What is *not* covered, and said in the risk report: the number of distinct
facts a person has is visible (one resource per fact); an intruder who
knows more than ``m`` facts; attribute inference from ``m`` known facts.
``intruder.attack`` measures the result against the extract itself.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import orjson

Json = dict[str, Any]

SECURITY = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "ANONYED",
    "display": "anonymized",
}

#: code systems whose codes are public vocabularies (never local, never free text)
STANDARD_SYSTEMS = (
    "http://snomed.info/sct",
    "http://loinc.org",
    "https://dmd.nhs.uk",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/cvx",
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-uk",
    "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/",
    "https://fhir.hl7.org.uk/CodeSystem/",
    "https://fhir.nhs.uk/CodeSystem/",
)


@dataclass(frozen=True)
class Shape:
    """What of one resource type is released."""

    code: str  #: the element holding the fact's main code (the fact needs it)
    coded: tuple[str, ...] = ()  #: further CodeableConcept (or list) elements kept as codes
    codings: tuple[str, ...] = ()  #: Coding elements kept as codes
    plain: tuple[str, ...] = ()  #: fixed-vocabulary ``code`` elements (status, intent)
    when: tuple[str, ...] = ()  #: where the clinical date is, first present wins
    year_as: str = ""  #: where the year is released (``period.start`` for a Period)
    subject: str = "subject"
    banded: bool = False  #: an Observation whose valueQuantity is released as a band


SHAPES: dict[str, Shape] = {
    "Condition": Shape(
        "code",
        coded=("category",),
        when=("onsetDateTime", "onsetPeriod.start", "recordedDate"),
        year_as="onsetDateTime",
    ),
    "Procedure": Shape(
        "code",
        plain=("status",),
        when=("performedDateTime", "performedPeriod.start"),
        year_as="performedDateTime",
    ),
    "Encounter": Shape(
        "type",
        codings=("class",),
        plain=("status",),
        when=("period.start",),
        year_as="period.start",
    ),
    "Observation": Shape(
        "code",
        coded=("category", "valueCodeableConcept"),
        plain=("status",),
        when=("effectiveDateTime", "effectivePeriod.start", "issued"),
        year_as="effectiveDateTime",
        banded=True,
    ),
    "DiagnosticReport": Shape(
        "code",
        coded=("category",),
        plain=("status",),
        when=("effectiveDateTime", "effectivePeriod.start", "issued"),
        year_as="effectiveDateTime",
    ),
    "MedicationRequest": Shape(
        "medicationCodeableConcept",
        plain=("status", "intent"),
        when=("authoredOn",),
        year_as="authoredOn",
    ),
    "MedicationStatement": Shape(
        "medicationCodeableConcept",
        plain=("status",),
        when=("effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
        year_as="effectiveDateTime",
    ),
    "Immunization": Shape(
        "vaccineCode",
        plain=("status",),
        when=("occurrenceDateTime",),
        year_as="occurrenceDateTime",
        subject="patient",
    ),
    "AllergyIntolerance": Shape(
        "code",
        when=("onsetDateTime", "recordedDate"),
        year_as="recordedDate",
        subject="patient",
    ),
}

#: diagnoses: the sensitive attribute of the diversity rule
SENSITIVE_TYPES = frozenset({"Condition"})


def released_types() -> frozenset[str]:
    """The clinical types an anonymised extract can hold (besides Patient)."""
    return frozenset(SHAPES)


def _get(resource: Json, path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _put(out: Json, path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        _put(out.setdefault(head, {}), rest, value)
    else:
        out[head] = value


def _standard(system: Any) -> bool:
    return isinstance(system, str) and system.startswith(STANDARD_SYSTEMS)


def _coding(c: Any) -> Json | None:
    if not isinstance(c, dict) or not _standard(c.get("system")):
        return None
    code = c.get("code")
    if not isinstance(code, str) or not code or len(code) > 64:
        return None
    return {"system": c["system"], "code": code}


def _concept(value: Any) -> Json | None:
    """A CodeableConcept reduced to its standard codings (sorted: order carries nothing)."""
    if not isinstance(value, dict):
        return None
    codings = [x for x in (_coding(c) for c in value.get("coding") or ()) if x is not None]
    if not codings:
        return None
    unique = {(c["system"], c["code"]): c for c in codings}
    return {"coding": [unique[k] for k in sorted(unique)]}


def _concepts(value: Any) -> Any:
    if isinstance(value, list):
        out = [x for x in (_concept(v) for v in value) if x is not None]
        unique = {orjson.dumps(x, option=orjson.OPT_SORT_KEYS): x for x in out}
        return [unique[k] for k in sorted(unique)] or None
    return _concept(value)


def _year(value: Any) -> str | None:
    if isinstance(value, str) and len(value) >= 4 and value[:4].isdigit():
        return value[:4]
    return None


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
    main = _get(resource, shape.code)
    main_out = _concepts(main) if isinstance(main, list) else _concept(main)
    if not main_out:
        return None
    out: Json = {}
    _put(out, shape.code, main_out)
    for path in shape.coded:
        got = _concepts(_get(resource, path))
        if got:
            _put(out, path, got)
    for path in shape.codings:
        got = _coding(_get(resource, path))
        if got is not None:
            _put(out, path, got)
    for path in shape.plain:
        value = _get(resource, path)
        if isinstance(value, str) and value.isascii() and 0 < len(value) <= 32:
            _put(out, path, value)
    for path in shape.when:
        year = _year(_get(resource, path))
        if year is not None:
            _put(out, shape.year_as, year)
            break
    quantity = None
    if shape.banded:
        q = resource.get("valueQuantity")
        if isinstance(q, dict) and isinstance(q.get("value"), int | float):
            unit = q.get("code") if _standard(q.get("system")) or q.get("system") else None
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
    and the outermost bands are open (no low, or no high), so no released
    number is one person's exact extreme value.
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
                q = _round3(values[min(n - 1, i * n // self.per)])
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


LEVELS = ("as recorded", "without its year", "without its value band", "its code alone")


@dataclass
class Plan:
    """Every person's facts (interned) at every level of generalisation; what survives."""

    facts: list[bytes] = field(default_factory=list)
    _ids: dict[bytes, int] = field(default_factory=dict)
    #: each person's facts, each as its ladder of fact ids (one per level)
    ladders: list[list[tuple[int, ...]]] = field(default_factory=list)
    #: each person's released facts (filled in by ``enforce``)
    people: list[set[int]] = field(default_factory=list)
    sensitive: set[int] = field(default_factory=set)
    #: facts kept in preference when a set of facts is too rare (a cohort's own condition)
    anchored: set[int] = field(default_factory=set)

    def _intern(self, fact: bytes, is_sensitive: bool) -> int:
        i = self._ids.get(fact)
        if i is None:
            i = self._ids[fact] = len(self.facts)
            self.facts.append(fact)
        if is_sensitive:
            self.sensitive.add(i)
        return i

    def add_person(
        self, facts: Iterable[tuple[list[bytes], bool]], anchored: Iterable[list[bytes]] = ()
    ) -> int:
        """Record one person's facts, each as its ladder (``Draft.ladder``) with whether
        it is a diagnosis; the person's number."""
        ladders = [tuple(self._intern(f, s) for f in ladder) for ladder, s in facts]
        for ladder in anchored:
            self.anchored.update(self._intern(f, False) for f in ladder)
        self.ladders.append(ladders)
        self.people.append({ladder[0] for ladder in ladders})
        return len(self.people) - 1


@dataclass
class Suppression:
    """What enforcing k^m-anonymity cost."""

    facts_in: int = 0
    facts_out: int = 0
    rounds: int = 0
    #: how many (class, fact) choices settled at each level of ``LEVELS``
    levels: Counter[str] = field(default_factory=Counter)


def enforce(
    plan: Plan, classes: Iterable[list[int]], k: int, m: int, diversity: bool = True
) -> Suppression:
    """Generalise, then suppress, until in every class every set of at most ``m``
    released facts of a member is held by at least ``k`` members and (``diversity``) no
    diagnosis is held by every member. Fills ``plan.people``.

    First, for each kind of fact (its main code) within a class, one level of
    generalisation is chosen for the whole class: the one that keeps the most
    people's facts with at least ``k`` holders (the finer on a tie); facts still
    rarer than that are suppressed. Then sets of up to ``m`` facts held by fewer
    than ``k`` members lose their rarer fact for those members, and singles are
    checked again, until nothing changes. Support is counted on exact released
    content, so an intruder who knows less than a fact (no category, a month
    instead of a year) faces at least as many candidates.
    """
    if m < 1 or m > 3:
        raise ValueError("m (facts the intruder knows) must be 1, 2 or 3")
    cost = Suppression(facts_in=sum(len(p) for p in plan.people))
    for members in classes:
        _generalise_class(plan, members, k, cost)
        cost.rounds = max(cost.rounds, _suppress_class(plan, members, k, m, diversity))
    cost.facts_out = sum(len(p) for p in plan.people)
    return cost


def _generalise_class(plan: Plan, members: list[int], k: int, cost: Suppression) -> None:
    by_kind: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for p in members:
        for ladder in plan.ladders[p]:
            by_kind.setdefault(ladder[-1], []).append((p, ladder))
    chosen: dict[int, set[int]] = {p: set() for p in members}
    for occurrences in by_kind.values():
        best: tuple[int, int] | None = None  # (kept, -level)
        for level in range(len(LEVELS)):
            holders: dict[int, set[int]] = {}
            for p, ladder in occurrences:
                holders.setdefault(ladder[level], set()).add(p)
            kept = sum(len(h) for h in holders.values() if len(h) >= k)
            if best is None or kept > best[0]:
                best = (kept, level)
        assert best is not None
        level = best[1]
        cost.levels[LEVELS[level]] += 1
        holders = {}
        for p, ladder in occurrences:
            holders.setdefault(ladder[level], set()).add(p)
        for fact, who in holders.items():
            if len(who) >= k:
                for p in who:
                    chosen[p].add(fact)
    for p in members:
        plan.people[p] = chosen[p]


def _suppress_class(plan: Plan, members: list[int], k: int, m: int, diversity: bool) -> int:
    people = plan.people
    rounds = 0
    while True:
        rounds += 1
        changed = False
        support = Counter(f for p in members for f in people[p])
        drop = {f for f, c in support.items() if c < k}
        if diversity:
            drop |= {f for f, c in support.items() if c == len(members) and f in plan.sensitive}
        if drop:
            for p in members:
                people[p] -= drop
            changed = True
            support = Counter(f for p in members for f in people[p])
        for size in range(2, m + 1):
            counts: Counter[tuple[int, ...]] = Counter()
            for p in members:
                counts.update(combinations(sorted(people[p]), size))
            bad = {combo for combo, c in counts.items() if c < k}
            if not bad:
                continue
            changed = True
            for p in members:
                held = people[p]
                for combo in combinations(sorted(held), size):
                    if combo in bad and all(f in held for f in combo):
                        # the rarer fact goes, for the few who hold the whole set
                        held.discard(min(combo, key=lambda f: (f in plan.anchored, support[f], f)))
            break  # recount from singles: supports have changed
        if not changed:
            return rounds


def project(fact: bytes) -> list[tuple[str, str, str]]:
    """What an intruder could know of a fact: its type, a code and its year (one
    projection per code of its main element; the first is the fact's own)."""
    rtype, content = orjson.loads(fact)
    shape = SHAPES[rtype]
    year = _get(content, shape.year_as) or ""
    main = _get(content, shape.code)
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


def facts_of(plan: Plan, person: int) -> Iterator[bytes]:
    """The facts of one person that survived, in a stable order."""
    for f in sorted(plan.people[person]):
        yield plan.facts[f]
