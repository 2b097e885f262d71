"""The council's case-management JSON, turned into FHIR R4 dicts (pure functions, no I/O).

Mapping choices:

- person -> ``Patient``: the NHS number identifier only when the council
  recorded one (one record in five has none and is matched on demographics),
  always the council's own ``personRef``; ``caseStatus`` OPEN/CLOSED -> ``active``.
- assessment -> ``ClinicalImpression`` (status completed): R4's resource for
  "the outcome of an assessment process", with the professional's conclusion
  in ``summary``. An ``Observation`` would claim a measured value, and a
  ``QuestionnaireResponse`` needs the form, which the council does not send.
- service in place -> ``CarePlan`` (active, intent plan, category care plan
  with the text "Social care"): one activity naming the service, its hours
  a week and the provider.
- alert -> ``Flag`` (active, flag-category ``safety``, text "Safeguarding");
  a restricted alert is labelled SDV in ``meta.security`` so consent can
  withhold it.
- carer -> ``RelatedPerson`` with the relationship from v3 RoleCode.

The council's own codes (``CA01``, ``SV-HC``, ``AL-SG`` ...) are kept as a
coding in a per-source code system next to the readable text, so nothing the
source said is lost; an unknown code becomes text only.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from carelink.errors import SourceBadPayload
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import (
    Json,
    SourcePerson,
    local_id_system,
    security_labels,
    source_uri,
)
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
#: the council's relationship codes -> v3 RoleCode (code, display)
ROLES = {
    "SPO": ("SPS", "spouse"),
    "DAU": ("DAU", "natural daughter"),
    "SON": ("SON", "natural son"),
    "FRD": ("FRND", "unrelated friend"),
}
GENDERS = {"M": "male", "F": "female", "U": "unknown"}
ACTIVE = {"OPEN": True, "CLOSED": False}
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
SNOMED = "http://snomed.info/sct"
SOCIAL_CARE_PLAN = {"system": SNOMED, "code": "734163000", "display": "Care plan"}
#: where the council's own code lists live, per source and list
LOCAL_CODE_SYSTEM = "https://carelink.example/CodeSystem/{source}/{codelist}"


def iso(value: Any, source: str, field: str) -> str:
    """``DD/MM/YYYY`` to ISO; anything else is a bad payload naming the field.

    >>> iso("07/03/1941", "social-care", "dateOfBirth")
    '1941-03-07'
    """
    try:
        day, month, year = str(value).split("/")
        if len(year) != 4:
            raise ValueError(year)
        return date(int(year), int(month), int(day)).isoformat()
    except (ValueError, TypeError) as exc:
        raise SourceBadPayload(source, f"{field} is not a DD/MM/YYYY date") from exc


def _object(value: Any, source: str, what: str) -> Json:
    if not isinstance(value, dict):
        raise SourceBadPayload(source, f"{what} is not a JSON object")
    return value


def _require(doc: Any, source: str, *fields: str) -> Json:
    """``doc`` as an object holding every field (nulls count as missing)."""
    obj = _object(doc, source, "answer")
    missing = [f for f in fields if obj.get(f) is None]
    if missing:
        raise SourceBadPayload(source, f"missing {', '.join(missing)}")
    return obj


def _text(doc: Json, field: str, source: str) -> str | None:
    """An optional text field: blank or null is absent, a non-string is a bad payload."""
    value = doc.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise SourceBadPayload(source, f"{field} is not text")
    return value


def _required_text(doc: Json, field: str, source: str) -> str:
    value = _text(doc, field, source)
    if value is None:
        raise SourceBadPayload(source, f"missing {field}")
    return value


def _coded(source: str, codelist: str, code: str, names: dict[str, str]) -> Json:
    """A CodeableConcept keeping the council's code; unknown codes become text only."""
    name = names.get(code)
    if name is None:
        return {"text": code}
    system = LOCAL_CODE_SYSTEM.format(source=source, codelist=codelist)
    return {"coding": [{"system": system, "code": code, "display": name}], "text": name}


def patient(doc: Json, source: str) -> Json:
    """The council's person as a FHIR Patient (id namespaced)."""
    doc = _require(doc, source, "personRef", "surname", "forename", "dateOfBirth")
    ref = _required_text(doc, "personRef", source)
    identifiers: list[Json] = []
    nhs = _text(doc, "nhsNo", source)
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    identifiers.append({"system": local_id_system(source), "value": ref})
    out: Json = {
        "resourceType": "Patient",
        "id": namespaced_id(source, ref),
        "meta": {"source": source_uri(source)},
        "identifier": identifiers,
        "name": [
            {
                "use": "official",
                "family": _required_text(doc, "surname", source),
                "given": [_required_text(doc, "forename", source)],
            }
        ],
        "gender": GENDERS.get(_text(doc, "genderCode", source) or "U", "unknown"),
        "birthDate": iso(doc["dateOfBirth"], source, "dateOfBirth"),
    }
    active = ACTIVE.get(_text(doc, "caseStatus", source) or "")
    if active is not None:
        out["active"] = active
    address = _address(doc, source)
    if address:
        out["address"] = [address]
    return out


def _address(doc: Json, source: str) -> Json:
    lines = doc.get("addressLines") or []
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise SourceBadPayload(source, "addressLines is not a list of text")
    out: Json = {}
    if any(x.strip() for x in lines):
        out["line"] = [x for x in lines if x.strip()]
    postcode = _text(doc, "postCode", source)
    if postcode:
        out["postalCode"] = postcode
    return {"use": "home", **out} if out else {}


def source_person(doc: Json, source: str) -> SourcePerson:
    """One entry of the council's person list, as the patient index needs it."""
    p = patient(doc, source)
    nhs = next((i["value"] for i in p["identifier"] if i["system"] == NHS_NUMBER_SYSTEM), None)
    address = (p.get("address") or [{}])[0]
    return SourcePerson(
        source=source,
        local_id=str(doc["personRef"]),
        nhs_number=nhs,
        given=p["name"][0]["given"][0],
        family=p["name"][0]["family"],
        birth_date=p["birthDate"],
        gender=p["gender"],
        postcode=address.get("postalCode"),
        address_line=(address.get("line") or [None])[0],
        patient=p,
    )


def read_case(doc: Json, source: str, patient_ref: str) -> tuple[list[Json], tuple[str, ...]]:
    """Every readable resource in one case (the council's Patient first), and the items
    left out and why (``"alerts[1]: missing alertId"``).

    One assessment, service, alert or carer the adapter cannot read costs only
    itself; the person, or a list that is not a list, is a bad payload for the
    whole case, since without them the answer cannot be tied to anyone.
    """
    doc = _require(doc, source, "assessments", "services", "alerts", "carers")
    subject = {"reference": patient_ref}
    out = [patient(doc, source)]
    skipped: list[str] = []
    for field, build in _ITEMS:
        items = doc.get(field)
        if not isinstance(items, list):
            raise SourceBadPayload(source, f"{field} is not a list")
        for i, item in enumerate(items):
            try:
                out.append(build(_object(item, source, f"an entry of {field}"), source, subject))
            except SourceBadPayload as exc:
                skipped.append(f"{field}[{i}]: {exc.reason}")
    return out, tuple(skipped)


def _base(resource_type: str, source: str, local: str) -> Json:
    return {
        "resourceType": resource_type,
        "id": namespaced_id(source, local),
        "meta": {"source": source_uri(source)},
    }


def _assessment(a: Json, source: str, subject: Json) -> Json:
    _require(a, source, "assessmentId", "assessmentType", "completedOn")
    kind = _required_text(a, "assessmentType", source)
    completed = iso(a["completedOn"], source, "completedOn")
    out = _base("ClinicalImpression", source, _required_text(a, "assessmentId", source))
    out |= {
        "status": "completed",
        "code": _coded(source, "assessment-type", kind, ASSESSMENTS),
        "description": ASSESSMENTS.get(kind, kind),
        "subject": subject,
        "effectiveDateTime": completed,
        "date": completed,
    }
    outcome = _text(a, "outcome", source)
    if outcome:
        out["summary"] = outcome
    return out


def _service(s: Json, source: str, subject: Json) -> Json:
    _require(s, source, "serviceId", "serviceType", "startDate")
    kind = _required_text(s, "serviceType", source)
    name = SERVICES.get(kind, kind)
    hours = s.get("hoursPerWeek")
    has_hours = isinstance(hours, int | float) and not isinstance(hours, bool)
    detail: Json = {
        "code": _coded(source, "service-type", kind, SERVICES),
        "status": "in-progress",
        "description": f"{name}, {hours:g} hours a week" if has_hours else name,
    }
    provider = _text(s, "provider", source)
    if provider:
        detail["performer"] = [{"display": provider}]
    out = _base("CarePlan", source, _required_text(s, "serviceId", source))
    out |= {
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [SOCIAL_CARE_PLAN], "text": "Social care"}],
        "title": name,
        "subject": subject,
        "period": {"start": iso(s["startDate"], source, "startDate")},
        "activity": [{"detail": detail}],
    }
    return out


def _alert(al: Json, source: str, subject: Json) -> Json:
    _require(al, source, "alertId", "alertType", "raisedOn")
    out = _base("Flag", source, _required_text(al, "alertId", source))
    if al.get("restricted") is True:
        out["meta"]["security"] = security_labels("SDV")
    out |= {
        "status": "active",
        "category": [
            {
                "coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}],
                "text": "Safeguarding",
            }
        ],
        "code": _coded(source, "alert-type", _required_text(al, "alertType", source), ALERTS),
        "subject": subject,
        "period": {"start": iso(al["raisedOn"], source, "raisedOn")},
    }
    return out


def _carer(c: Json, source: str, subject: Json) -> Json:
    _require(c, source, "carerId", "relationship")
    relation = _required_text(c, "relationship", source)
    role = ROLES.get(relation)
    out = _base("RelatedPerson", source, _required_text(c, "carerId", source))
    out |= {
        "active": True,
        "patient": subject,
        "relationship": [
            {"coding": [{"system": ROLE_SYSTEM, "code": role[0], "display": role[1]}]}
            if role
            else {"text": relation}
        ],
    }
    name = _text(c, "carerName", source)
    if name:
        out["name"] = [{"text": name}]
    return out


_ITEMS = (
    ("assessments", _assessment),
    ("services", _service),
    ("alerts", _alert),
    ("carers", _carer),
)
