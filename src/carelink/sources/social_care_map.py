"""The council's case-management JSON, turned into FHIR R4.

Mapping choices:

- person -> ``Patient`` (NHS number only when the council recorded it)
- assessment -> ``ClinicalImpression`` (an assessment of need with an outcome:
  R4's resource for "the outcome of an assessment process")
- service in place -> ``CarePlan`` (category social care, one activity naming
  the service and its hours)
- alert -> ``Flag`` (category safety; restricted alerts labelled SDV)
- carer -> ``RelatedPerson`` (relationship from v3 RoleCode)
"""

from __future__ import annotations

from datetime import date
from typing import Any

from carelink.errors import SourceBadPayload
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import Json, local_id_system, security_labels, source_uri
from carelink.sources.namespacing import namespaced_id

ASSESSMENTS = {"CA01": "Care Act needs assessment", "CF02": "Children and families assessment"}
SERVICES = {
    "SV-HC": "Home care",
    "SV-DC": "Day centre",
    "SV-ML": "Meals service",
    "SV-TC": "Telecare",
    "SV-RC": "Residential care",
}
ALERTS = {"AL-SG": "Adult safeguarding concern", "AL-CP": "Child protection plan"}
ROLES = {
    "SPO": ("SPS", "spouse"),
    "DAU": ("DAU", "natural daughter"),
    "SON": ("SON", "natural son"),
    "FRD": ("FRND", "unrelated friend"),
}
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
SNOMED = "http://snomed.info/sct"
SOCIAL_CARE_PLAN = {"system": SNOMED, "code": "734163000", "display": "Care plan"}


def iso(value: Any, source: str, field: str) -> str:
    """``DD/MM/YYYY`` to ISO; anything else is a bad payload naming the field."""
    try:
        day, month, year = str(value).split("/")
        return date(int(year), int(month), int(day)).isoformat()
    except (ValueError, TypeError) as exc:
        raise SourceBadPayload(source, f"{field} is not a DD/MM/YYYY date") from exc


def _require(doc: Any, source: str, *fields: str) -> None:
    if not isinstance(doc, dict):
        raise SourceBadPayload(source, "expected a JSON object")
    missing = [f for f in fields if f not in doc]
    if missing:
        raise SourceBadPayload(source, f"missing {', '.join(missing)}")


def patient(doc: Json, source: str) -> Json:
    """The council's person as a FHIR Patient (id namespaced)."""
    _require(doc, source, "personRef", "surname", "forename", "dateOfBirth")
    ref = str(doc["personRef"])
    identifiers: list[Json] = []
    if doc.get("nhsNo"):
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": str(doc["nhsNo"])})
    identifiers.append({"system": local_id_system(source), "value": ref})
    out: Json = {
        "resourceType": "Patient",
        "id": namespaced_id(source, ref),
        "meta": {"source": source_uri(source)},
        "identifier": identifiers,
        "name": [{"use": "official", "family": doc["surname"], "given": [doc["forename"]]}],
        "birthDate": iso(doc["dateOfBirth"], source, "dateOfBirth"),
    }
    gender = {"M": "male", "F": "female"}.get(doc.get("genderCode", ""), "unknown")
    out["gender"] = gender
    lines = [x for x in doc.get("addressLines", []) if x]
    if lines or doc.get("postCode"):
        address: Json = {"use": "home"}
        if lines:
            address["line"] = lines
        if doc.get("postCode"):
            address["postalCode"] = doc["postCode"]
        out["address"] = [address]
    return out


def record(doc: Json, source: str, patient_ref: str) -> list[Json]:
    """Every resource in one case: the Patient first."""
    _require(doc, source, "assessments", "services", "alerts", "carers")
    subject = {"reference": patient_ref}
    meta = {"source": source_uri(source)}
    out = [patient(doc, source)]
    for a in doc["assessments"]:
        _require(a, source, "assessmentId", "assessmentType", "completedOn")
        out.append(
            {
                "resourceType": "ClinicalImpression",
                "id": namespaced_id(source, a["assessmentId"]),
                "meta": dict(meta),
                "status": "completed",
                "code": {"text": ASSESSMENTS.get(a["assessmentType"], a["assessmentType"])},
                "subject": subject,
                "effectiveDateTime": iso(a["completedOn"], source, "completedOn"),
                "summary": a.get("outcome", ""),
            }
        )
    for s in doc["services"]:
        _require(s, source, "serviceId", "serviceType", "startDate")
        name = SERVICES.get(s["serviceType"], s["serviceType"])
        hours = s.get("hoursPerWeek")
        text = f"{name}, {hours:g} hours a week" if isinstance(hours, int | float) else name
        out.append(
            {
                "resourceType": "CarePlan",
                "id": namespaced_id(source, s["serviceId"]),
                "meta": dict(meta),
                "status": "active",
                "intent": "plan",
                "category": [{"coding": [SOCIAL_CARE_PLAN], "text": "Social care"}],
                "title": name,
                "subject": subject,
                "period": {"start": iso(s["startDate"], source, "startDate")},
                "activity": [{"detail": {"status": "in-progress", "description": text}}],
            }
        )
    for al in doc["alerts"]:
        _require(al, source, "alertId", "alertType", "raisedOn")
        flag: Json = {
            "resourceType": "Flag",
            "id": namespaced_id(source, al["alertId"]),
            "meta": dict(meta),
            "status": "active",
            "category": [
                {"coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}]}
            ],
            "code": {"text": ALERTS.get(al["alertType"], al["alertType"])},
            "subject": subject,
            "period": {"start": iso(al["raisedOn"], source, "raisedOn")},
        }
        if al.get("restricted"):
            flag["meta"]["security"] = security_labels("SDV")
        out.append(flag)
    for c in doc["carers"]:
        _require(c, source, "carerId", "relationship")
        code, display = ROLES.get(c["relationship"], ("O", "other"))
        out.append(
            {
                "resourceType": "RelatedPerson",
                "id": namespaced_id(source, c["carerId"]),
                "meta": dict(meta),
                "active": True,
                "patient": subject,
                "relationship": [
                    {"coding": [{"system": ROLE_SYSTEM, "code": code, "display": display}]}
                ],
                "name": [{"text": str(c.get("carerName", ""))}],
            }
        )
    return out
