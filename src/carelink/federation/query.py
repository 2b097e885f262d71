"""Per-type search parameters the gateway supports, and matching resources to them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carelink.errors import InvalidRequest
from carelink.fhir.search import (
    DateQuery,
    DateRange,
    parse_date,
    target_range,
    token_matches,
)

Json = dict[str, Any]

#: type -> parameter -> (kind, element names tried in order)
PARAMS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "Encounter": {
        "date": ("date", ("period",)),
        "type": ("token", ("type",)),
        "status": ("token", ("status",)),
        "class": ("token", ("class",)),
    },
    "Condition": {
        "code": ("token", ("code",)),
        "category": ("token", ("category",)),
        "clinical-status": ("token", ("clinicalStatus",)),
        "onset-date": ("date", ("onsetDateTime", "onsetPeriod")),
    },
    "Observation": {
        "code": ("token", ("code",)),
        "category": ("token", ("category",)),
        "status": ("token", ("status",)),
        "date": ("date", ("effectiveDateTime", "effectivePeriod", "effectiveInstant")),
    },
    "MedicationStatement": {
        "code": ("token", ("medicationCodeableConcept",)),
        "status": ("token", ("status",)),
        "effective": ("date", ("effectiveDateTime", "effectivePeriod")),
    },
    "MedicationRequest": {
        "code": ("token", ("medicationCodeableConcept",)),
        "status": ("token", ("status",)),
        "intent": ("token", ("intent",)),
        "authoredon": ("date", ("authoredOn",)),
    },
    "AllergyIntolerance": {
        "code": ("token", ("code",)),
        "clinical-status": ("token", ("clinicalStatus",)),
        "date": ("date", ("recordedDate",)),
    },
    "Immunization": {
        "vaccine-code": ("token", ("vaccineCode",)),
        "status": ("token", ("status",)),
        "date": ("date", ("occurrenceDateTime",)),
    },
    "Procedure": {
        "code": ("token", ("code",)),
        "status": ("token", ("status",)),
        "date": ("date", ("performedDateTime", "performedPeriod")),
    },
    "EpisodeOfCare": {
        "type": ("token", ("type",)),
        "status": ("token", ("status",)),
        "date": ("date", ("period",)),
    },
    "CarePlan": {
        "category": ("token", ("category",)),
        "status": ("token", ("status",)),
        "date": ("date", ("period",)),
    },
    "Flag": {"status": ("token", ("status",)), "date": ("date", ("period",))},
    "ServiceRequest": {
        "code": ("token", ("code",)),
        "status": ("token", ("status",)),
        "category": ("token", ("category",)),
        "authored": ("date", ("authoredOn",)),
    },
    "DocumentReference": {
        "type": ("token", ("type",)),
        "status": ("token", ("status",)),
        "category": ("token", ("category",)),
        "date": ("date", ("date",)),
    },
}

SEARCH_TYPES = tuple(PARAMS)

#: the element that dates a resource, for $everything's start/end
CLINICAL_DATE: dict[str, tuple[str, ...]] = {
    t: next((paths for kind, paths in p.values() if kind == "date"), ()) for t, p in PARAMS.items()
}


#: modifiers each kind of parameter supports; any other modifier is refused (400)
MODIFIERS: dict[str, frozenset[str]] = {
    "token": frozenset({"not", "missing"}),
    "date": frozenset({"missing"}),
    "string": frozenset({"exact", "missing"}),
}


@dataclass(frozen=True)
class Criterion:
    """One search parameter (with its modifier, if any) applied to one element set."""

    name: str
    kind: str
    paths: tuple[str, ...]
    values: tuple[str, ...]  # repeated parameters AND together; commas within one OR
    dates: tuple[DateQuery, ...] = ()
    modifier: str | None = None

    @property
    def param(self) -> str:
        """The parameter as written in the query (``code:not``)."""
        return f"{self.name}:{self.modifier}" if self.modifier else self.name

    def matches(self, resource: Json) -> bool:
        """Does ``resource`` satisfy every repetition of this parameter?"""
        if self.modifier == "missing":
            present = any(resource.get(p) not in (None, [], {}, "") for p in self.paths)
            return all(present != (v == "true") for v in self.values)
        if self.kind == "date":
            target = _first_range(resource, self.paths)
            return target is not None and all(d.matches(target) for d in self.dates)
        concept = [_as_concept(resource.get(p)) for p in self.paths if p in resource]
        if self.modifier == "not":  # FHIR: also true when the element is absent
            return not any(token_matches(v, self.name, concept) for v in self.values)
        return all(token_matches(v, self.name, concept) for v in self.values)


def _as_concept(value: Any) -> Any:
    if isinstance(value, str):
        return {"code": value}
    return value


def _first_range(resource: Json, paths: tuple[str, ...]) -> DateRange | None:
    for p in paths:
        if p in resource:
            return target_range(resource[p])
    return None


def criteria(rtype: str, params: Mapping[str, list[str]]) -> tuple[list[Criterion], list[str]]:
    """Parse the type's search parameters; return the criteria and the unknown names.

    ``name:modifier`` is read as FHIR says: ``:not`` on tokens, ``:missing`` on
    every listed parameter, ``:exact`` on strings; any other modifier on a known
    parameter is refused rather than ignored (ignoring ``code:not`` would return
    exactly what the caller asked to exclude).
    """
    known = PARAMS.get(rtype, {})
    out: list[Criterion] = []
    unknown: list[str] = []
    for key, values in params.items():
        name, colon, modifier = key.partition(":")
        spec = known.get(name)
        if spec is None:
            unknown.append(key)
            continue
        kind, paths = spec
        for v in values:
            if v == "":
                raise InvalidRequest(f"Parameter '{key}' has an empty value", key)
        if colon:
            if modifier not in MODIFIERS.get(kind, frozenset()):
                allowed = ", ".join(f":{m}" for m in sorted(MODIFIERS.get(kind, ())))
                raise InvalidRequest(
                    f"Modifier ':{modifier}' is not supported on {kind} parameter '{name}' "
                    f"(supported: {allowed})",
                    key,
                )
            if modifier == "missing" and any(v not in ("true", "false") for v in values):
                raise InvalidRequest(f"Parameter '{key}' must be true or false", key)
            out.append(Criterion(name, kind, paths, tuple(values), modifier=modifier))
        elif kind == "date":
            dates = tuple(parse_date(v, name) for v in values)
            out.append(Criterion(name, kind, paths, tuple(values), dates))
        else:
            out.append(Criterion(name, kind, paths, tuple(values)))
    return out, unknown


def in_period(resource: Json, start: DateRange | None, end: DateRange | None) -> bool:
    """$everything's start/end: resources dated outside are dropped; undated ones kept."""
    paths = CLINICAL_DATE.get(resource["resourceType"], ())
    target = _first_range(resource, paths) if paths else None
    if target is None:
        return True
    if start is not None and target.end <= start.start:
        return False
    return not (end is not None and target.start >= end.end)
