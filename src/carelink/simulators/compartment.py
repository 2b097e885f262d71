"""Which resources belong to a patient, after FHIR R4's Patient compartment.

R4's ``CompartmentDefinition/patient`` names, per resource type, the search
parameters through which a resource is in a Patient's compartment; a
resource is in the compartment of every Patient those parameters point at.
``PATIENT_COMPARTMENT`` holds the elements behind those parameters (dotted
paths through backbone elements, e.g. ``participant.actor``) so a loader can
follow them without a FHIRPath engine.

Deliberate departures from R4's table:

- ``Device.patient`` is followed (R4 leaves Device out of the compartment,
  but exports such as Synthea's link implanted devices to the patient this
  way, and a clinician expects to see them in the record);
- ``Group.member.entity`` is not: a cohort Group would otherwise be served
  inside each member's record, telling every member's reader who else is in it.

A type not listed here is in no patient's compartment (Practitioner,
Organization, Location, Medication ...): such resources are shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Json = dict[str, Any]

PATIENT_COMPARTMENT: dict[str, tuple[str, ...]] = {
    "Account": ("subject",),
    "AdverseEvent": ("subject",),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "Appointment": ("participant.actor",),
    "AppointmentResponse": ("actor",),
    "AuditEvent": ("agent.who", "entity.what"),
    "Basic": ("subject", "author"),
    "BodyStructure": ("patient",),
    "CarePlan": ("subject", "activity.detail.performer"),
    "CareTeam": ("subject", "participant.member"),
    "ChargeItem": ("subject",),
    "Claim": ("patient", "payee.party"),
    "ClaimResponse": ("patient",),
    "ClinicalImpression": ("subject",),
    "Communication": ("subject", "sender", "recipient"),
    "CommunicationRequest": ("subject", "sender", "recipient", "requester"),
    "Composition": ("subject", "author", "attester.party"),
    "Condition": ("subject", "asserter"),
    "Consent": ("patient",),
    "Coverage": ("policyHolder", "subscriber", "beneficiary", "payor"),
    "CoverageEligibilityRequest": ("patient",),
    "CoverageEligibilityResponse": ("patient",),
    "DetectedIssue": ("patient",),
    "Device": ("patient",),
    "DeviceRequest": ("subject", "performer"),
    "DeviceUseStatement": ("subject",),
    "DiagnosticReport": ("subject",),
    "DocumentManifest": ("subject", "author", "recipient"),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("subject",),
    "EnrollmentRequest": ("candidate",),
    "EpisodeOfCare": ("patient",),
    "ExplanationOfBenefit": ("patient", "payee.party"),
    "FamilyMemberHistory": ("patient",),
    "Flag": ("subject",),
    "Goal": ("subject",),
    "ImagingStudy": ("subject",),
    "Immunization": ("patient",),
    "ImmunizationEvaluation": ("patient",),
    "ImmunizationRecommendation": ("patient",),
    "Invoice": ("subject", "recipient"),
    "List": ("subject", "source"),
    "MeasureReport": ("subject",),
    "Media": ("subject",),
    "MedicationAdministration": ("subject", "performer.actor"),
    "MedicationDispense": ("subject", "receiver"),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "MolecularSequence": ("patient",),
    "NutritionOrder": ("patient",),
    "Observation": ("subject", "performer"),
    "Person": ("link.target",),
    "Procedure": ("subject", "performer.actor"),
    "Provenance": ("target",),
    "QuestionnaireResponse": ("subject", "author"),
    "RelatedPerson": ("patient",),
    "RequestGroup": ("subject", "action.participant"),
    "ResearchSubject": ("individual",),
    "RiskAssessment": ("subject",),
    "Schedule": ("actor",),
    "ServiceRequest": ("subject", "performer"),
    "Specimen": ("subject",),
    "SupplyDelivery": ("patient",),
    "SupplyRequest": ("deliverTo",),
    "VisionPrescription": ("patient",),
}


def compartment_references(resource: Json) -> Iterator[Json]:
    """The ``Reference`` objects through which ``resource`` may be in a patient's compartment.

    >>> obs = {"resourceType": "Observation", "performer": [{"reference": "Patient/1"}]}
    >>> [r["reference"] for r in compartment_references(obs)]
    ['Patient/1']
    """
    for path in PATIENT_COMPARTMENT.get(str(resource.get("resourceType")), ()):
        yield from _follow(resource, path.split("."))


def _follow(value: Any, steps: list[str]) -> Iterator[Json]:
    if isinstance(value, list):
        for item in value:
            yield from _follow(item, steps)
        return
    if not isinstance(value, dict):
        return
    if not steps:
        if isinstance(value.get("reference"), str):
            yield value
        return
    yield from _follow(value.get(steps[0]), steps[1:])
