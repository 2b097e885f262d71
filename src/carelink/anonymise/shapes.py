"""What of each clinical type the anonymised release keeps (``release.py``).

A ``Shape`` names, for one resource type, the element holding its fact's
main code, the further coded elements and fixed-vocabulary codes kept, where
its clinical date is and where the year is released. A type without a shape
is not released at all. Codes are kept only from standard code systems
(``STANDARD_SYSTEMS``: public vocabularies, never local codes), as
``system`` and ``code`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

Json = dict[str, Any]

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


def value_at(resource: Json, path: str) -> Any:
    """The value at a dotted path (``None`` where it is missing)."""
    value: Any = resource
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def put_at(out: Json, path: str, value: Any) -> None:
    """Set the value at a dotted path, making the objects on the way."""
    head, _, rest = path.partition(".")
    if rest:
        put_at(out.setdefault(head, {}), rest, value)
    else:
        out[head] = value


def is_standard(system: Any) -> bool:
    """Is this a standard code system (``STANDARD_SYSTEMS``)?"""
    return isinstance(system, str) and system.startswith(STANDARD_SYSTEMS)


def standard_coding(c: Any) -> Json | None:
    """A Coding reduced to its ``system`` and ``code``, if standard (else ``None``)."""
    if not isinstance(c, dict) or not is_standard(c.get("system")):
        return None
    code = c.get("code")
    if not isinstance(code, str) or not code or len(code) > 64:
        return None
    return {"system": c["system"], "code": code}


def standard_concept(value: Any) -> Json | None:
    """A CodeableConcept reduced to its standard codings (sorted: order carries nothing)."""
    if not isinstance(value, dict):
        return None
    codings = [x for x in (standard_coding(c) for c in value.get("coding") or ()) if x is not None]
    if not codings:
        return None
    unique = {(c["system"], c["code"]): c for c in codings}
    return {"coding": [unique[k] for k in sorted(unique)]}


def standard_concepts(value: Any) -> Any:
    """``standard_concept`` of a CodeableConcept, or of each of a list (deduplicated, sorted)."""
    if isinstance(value, list):
        out = [x for x in (standard_concept(v) for v in value) if x is not None]
        unique = {orjson.dumps(x, option=orjson.OPT_SORT_KEYS): x for x in out}
        return [unique[k] for k in sorted(unique)] or None
    return standard_concept(value)


def year_of(value: Any) -> str | None:
    """The year a FHIR date or dateTime starts with."""
    if isinstance(value, str) and len(value) >= 4 and value[:4].isdigit():
        return value[:4]
    return None
