"""Data minimisation for pseudonymised extracts: an allow-list of types and elements.

A pseudonymised project receives the clinical types below and, of each, only
the listed top-level elements (after the profile's rules have run, so what is
kept is already pseudonymised, shifted and stripped of free text). A type not
listed (documents, claims, devices, staff and organisations' own records) is
not released at all, and an element not listed (a new field in a source feed,
``text``, ``contained``, ``extension`` at the top level) is dropped: nothing
reaches a project by default.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_ALWAYS = frozenset({"resourceType", "id", "meta"})

ALLOWED: dict[str, frozenset[str]] = {
    t: frozenset(elements.split())
    for t, elements in {
        "Patient": "identifier gender birthDate deceasedBoolean deceasedDateTime address "
        "generalPractitioner",
        "Condition": "clinicalStatus verificationStatus category severity code bodySite subject "
        "encounter onsetDateTime onsetPeriod onsetAge abatementDateTime abatementPeriod "
        "abatementAge recordedDate stage",
        "Observation": "status category code subject encounter effectiveDateTime "
        "effectivePeriod effectiveInstant issued valueQuantity valueCodeableConcept "
        "valueBoolean valueInteger valueRange valueRatio valuePeriod valueDateTime "
        "dataAbsentReason interpretation bodySite method referenceRange component hasMember "
        "derivedFrom",
        "Encounter": "status class type serviceType priority subject period length reasonCode "
        "reasonReference diagnosis hospitalization serviceProvider",
        "Procedure": "status category code subject encounter performedDateTime performedPeriod "
        "reasonCode reasonReference bodySite outcome",
        "MedicationRequest": "status intent category priority medicationCodeableConcept "
        "medicationReference subject encounter authoredOn reasonCode reasonReference "
        "dosageInstruction dispenseRequest courseOfTherapyType",
        "MedicationStatement": "status category medicationCodeableConcept medicationReference "
        "subject effectiveDateTime effectivePeriod dateAsserted reasonCode dosage",
        "Immunization": "status vaccineCode patient encounter occurrenceDateTime primarySource "
        "route site doseQuantity reasonCode protocolApplied",
        "AllergyIntolerance": "clinicalStatus verificationStatus type category criticality code "
        "patient onsetDateTime recordedDate reaction",
        "DiagnosticReport": "status category code subject encounter effectiveDateTime "
        "effectivePeriod issued result conclusionCode",
        "CarePlan": "status intent category subject period created addresses activity",
        "Flag": "status category code subject period",
        "ClinicalImpression": "status code subject encounter effectiveDateTime effectivePeriod "
        "date finding",
    }.items()
}


def minimise(resource: Json) -> Json | None:
    """The resource with only its allowed elements; ``None`` for a type not released."""
    allowed = ALLOWED.get(str(resource.get("resourceType")))
    if allowed is None:
        return None
    return {k: v for k, v in resource.items() if k in allowed or k in _ALWAYS}
