"""Render population facts as the FHIR R4 a hospital EPR or GP system would send.

Used by the two FHIR-speaking simulators (acute, gp). Ids here are the
source's own local ids; the gateway's adapters namespace them.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid
from carelink.simulators import codes
from carelink.simulators.clinical import Fact
from carelink.simulators.population import Person

Json = dict[str, Any]

SENSITIVITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
LOCAL_SYSTEMS = {
    "acute": "https://acute-epr.example/Id/hospital-number",
    "gp": "https://gp-system.example/Id/patient-guid",
}


def coding(code: codes.Code) -> Json:
    """A Coding from a catalogue code."""
    return {"system": code.system, "code": code.code, "display": code.display}


def concept(*items: codes.Code | None) -> Json:
    """A CodeableConcept from one or more codes."""
    present = [c for c in items if c is not None]
    return {"coding": [coding(c) for c in present], "text": present[0].display}


def instant(value: datetime) -> str:
    """A FHIR dateTime with seconds and zone."""
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00")


#: a GP system's number is traced on PDS at registration: UK Core's "verified" status
VERIFIED_NHS_NUMBER = {
    "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
    "valueCodeableConcept": {
        "coding": [
            {
                "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                "code": "01",
                "display": "Number present and verified",
            }
        ]
    },
}


def patient(person: Person, source: str, local: str) -> Json:
    """The source's Patient resource (the GP's NHS number marked verified when valid)."""
    given = [person.given] + ([person.middle] if person.middle else [])
    nhs: Json = {"system": NHS_NUMBER_SYSTEM, "value": person.nhs_number}
    if source == "gp" and is_valid(person.nhs_number):
        nhs = {"extension": [VERIFIED_NHS_NUMBER], **nhs}
    return {
        "resourceType": "Patient",
        "id": local,
        "identifier": [
            nhs,
            {"system": LOCAL_SYSTEMS.get(source, f"https://{source}.example/Id"), "value": local},
        ],
        "name": [{"use": "official", "family": person.family, "given": given}],
        "gender": person.gender,
        "birthDate": person.birth_date.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [person.address_line],
                "city": person.town,
                "postalCode": person.postcode,
            }
        ],
        "telecom": [{"system": "phone", "value": person.phone, "use": "mobile"}],
        "generalPractitioner": [
            {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": person.gp_ods}}
        ],
    }


def _meta(fact: Fact) -> Json | None:
    if not fact.sensitivity:
        return None
    return {"security": [{"system": SENSITIVITY_SYSTEM, "code": fact.sensitivity}]}


def resource(fact: Fact, local: str) -> Json | None:
    """The FHIR resource for one fact of patient ``local``, or None if the kind has none."""
    subject = {"reference": f"Patient/{local}"}
    rid = f"{local}-{fact.local_id}"
    enc = {"reference": f"Encounter/{local}-{fact.encounter}"} if fact.encounter else None
    out: Json | None
    match fact.kind:
        case "encounter" | "admission":
            cls = (
                ("IMP", "inpatient encounter")
                if fact.kind == "admission"
                else ("AMB", "ambulatory")
            )
            out = {
                "resourceType": "Encounter",
                "status": fact.status,
                "class": {"system": ACT_CODE, "code": cls[0], "display": cls[1]},
                "type": [concept(fact.code)],
                "subject": subject,
                "period": {"start": instant(fact.when)},
            }
            end = fact.end or fact.when + timedelta(minutes=15)  # a finished consultation
            out["period"]["end"] = instant(end)
            if fact.related is not None:
                out["reasonCode"] = [concept(fact.related)]
        case "condition" | "diagnosis":
            category = "encounter-diagnosis" if fact.kind == "diagnosis" else "problem-list-item"
            out = {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": CLINICAL_STATUS, "code": "active"}]},
                "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
                "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": category}]}],
                "code": concept(fact.code, fact.related),
                "subject": subject,
                "onsetDateTime": instant(fact.when),
                "recordedDate": instant(fact.when),
            }
            if enc:
                out["encounter"] = enc
        case "procedure":
            out = {
                "resourceType": "Procedure",
                "status": fact.status,
                "code": concept(fact.code),
                "subject": subject,
                "performedDateTime": instant(fact.when),
            }
            if enc:
                out["encounter"] = enc
        case "lab" | "vital":
            category = "laboratory" if fact.kind == "lab" else "vital-signs"
            out = {
                "resourceType": "Observation",
                "status": fact.status,
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
                "code": concept(fact.code, fact.related),
                "subject": subject,
                "effectiveDateTime": instant(fact.when),
                "valueQuantity": {
                    "value": fact.value,
                    "unit": fact.unit,
                    "system": codes.UCUM,
                    "code": fact.unit,
                },
            }
            if enc:
                out["encounter"] = enc
        case "bp":
            out = {
                "resourceType": "Observation",
                "status": fact.status,
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
                "code": concept(fact.code, fact.related),
                "subject": subject,
                "effectiveDateTime": instant(fact.when),
                "component": [
                    _bp(codes.SYSTOLIC, fact.value),
                    _bp(codes.DIASTOLIC, float(fact.unit or 0)),
                ],
            }
            if enc:
                out["encounter"] = enc
        case "medication":
            out = {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": concept(fact.code),
                "subject": subject,
                "effectivePeriod": {"start": instant(fact.when)},
                "dateAsserted": instant(fact.when),
                "dosage": [{"text": fact.text}],
            }
        case "prescription":
            out = {
                "resourceType": "MedicationRequest",
                "status": fact.status,
                "intent": "order",
                "medicationCodeableConcept": concept(fact.code),
                "subject": subject,
                "authoredOn": instant(fact.when),
                "dosageInstruction": [{"text": fact.text}],
                "substitution": {"allowedBoolean": True},  # UK Core: 1..1
            }
            if enc:
                out["encounter"] = enc
        case "allergy":
            out = {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
                "code": concept(fact.code),
                "patient": subject,
                "onsetDateTime": instant(fact.when),
                "recordedDate": instant(fact.when),
            }
        case "immunisation":
            out = {
                "resourceType": "Immunization",
                "status": fact.status,
                "vaccineCode": concept(fact.code),
                "patient": subject,
                "occurrenceDateTime": instant(fact.when),
                "primarySource": True,
            }
        case "referral":
            out = {
                "resourceType": "ServiceRequest",
                "status": fact.status,
                "intent": "order",
                "code": concept(fact.code),
                "subject": subject,
                "authoredOn": instant(fact.when),
                "performerType": concept(fact.related),
            }
        case "careplan":
            out = {
                "resourceType": "CarePlan",
                "status": fact.status,
                "intent": "plan",
                "category": [concept(fact.code)],
                "subject": subject,
                "period": {"start": instant(fact.when)},
                "description": fact.text,
            }
        case "document":
            text = (fact.text or "").encode()
            out = {
                "resourceType": "DocumentReference",
                "status": fact.status,
                "type": concept(fact.code),
                "subject": subject,
                "date": instant(fact.when),
                "content": [
                    {
                        "attachment": {
                            "contentType": "text/plain",
                            "data": base64.b64encode(text).decode(),
                            "title": "Discharge summary",
                        }
                    }
                ],
            }
            if enc:
                out["context"] = {"encounter": [enc]}
        case _:
            return None
    out["id"] = rid
    meta = _meta(fact) or {}
    meta["lastUpdated"] = instant(fact.end or fact.when)
    out["meta"] = meta
    return out


def _bp(code: tuple[codes.Code, codes.Code], value: float | None) -> Json:
    return {
        "code": concept(*code),
        "valueQuantity": {"value": value, "unit": "mmHg", "system": codes.UCUM, "code": "mm[Hg]"},
    }


def record(person: Person, source: str, local: str, facts: tuple[Fact, ...]) -> list[Json]:
    """Patient plus every resource the source holds about them."""
    out = [patient(person, source, local)]
    out.extend(r for f in facts if (r := resource(f, local)) is not None)
    return out
