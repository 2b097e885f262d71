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


@dataclass(frozen=True)
class Criterion:
    """One search parameter applied to one element set."""

    name: str
    kind: str
    paths: tuple[str, ...]
    values: tuple[str, ...]  # repeated parameters AND together
    dates: tuple[DateQuery, ...] = ()

    def matches(self, resource: Json) -> bool:
        """Does ``resource`` satisfy every repetition of this parameter?"""
        if self.kind == "date":
            target = _first_range(resource, self.paths)
            return target is not None and all(d.matches(target) for d in self.dates)
        concept = [_as_concept(resource.get(p)) for p in self.paths if p in resource]
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
    """Parse the type's search parameters; return the criteria and the unknown names."""
    known = PARAMS.get(rtype, {})
    out: list[Criterion] = []
    unknown: list[str] = []
    for name, values in params.items():
        spec = known.get(name)
        if spec is None:
            unknown.append(name)
            continue
        kind, paths = spec
        if kind == "date":
            dates = tuple(parse_date(v, name) for v in values)
            out.append(Criterion(name, kind, paths, tuple(values), dates))
        else:
            for v in values:
                if v == "":
                    raise InvalidRequest(f"Parameter '{name}' has an empty value", name)
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
