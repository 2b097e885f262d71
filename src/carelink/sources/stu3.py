"""One FHIR STU3 resource (GP Connect / CareConnect) as FHIR R4, for UK Core.

``to_r4`` converts the resource types a GP Connect structured record carries:
renamed elements (``context`` -> ``encounter``, ``assertedDate`` ->
``recordedDate`` ...), codes that became CodeableConcepts (clinical and
verification status), single values that became lists, ``notGiven`` that became
a status, ``ProcedureRequest`` and ``ReferralRequest`` that became
``ServiceRequest`` (references to them follow), and STU3 ``Dosage`` ->
R4 ``doseAndRate``. Whatever has no R4 place is then dropped element by element
against the R4 element table (``fhir/r4_types.json``) and named in the result's
``dropped`` paths, so nothing goes silently. STU3 profiles in ``meta.profile``
are removed: the resource no longer conforms to them.

``listed_patient`` is ``to_r4`` for a practice list's Patients (the index build reads
every one): the same R4, but a Patient that is already R4 once its profile is gone (the
simulator's, and most a practice sends) is looked at, not walked and built again.

>>> r = to_r4({"resourceType": "Condition", "id": "c", "clinicalStatus": "active",
...            "subject": {"reference": "Patient/p"}}).resource
>>> r["clinicalStatus"]["coding"][0]["code"]
'active'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from carelink.sources.base import Json
from carelink.sources.r4_prune import kept_whole, prune

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"
#: GP Connect is English: a time without a zone is the time in England
#: R4 elements a resource cannot be without (cardinality 1..1), for the types a
#: structured record carries; ``[x]`` names a choice
REQUIRED: dict[str, tuple[str, ...]] = {
    "AllergyIntolerance": ("patient",),
    "Condition": ("subject",),
    "MedicationStatement": ("status", "medication[x]", "subject"),
    "MedicationRequest": ("status", "intent", "medication[x]", "subject"),
    "Encounter": ("status", "class"),
    "Immunization": ("status", "vaccineCode", "patient", "occurrence[x]"),
    "Observation": ("status", "code"),
    "DiagnosticReport": ("status", "code"),
    "ServiceRequest": ("status", "intent", "subject"),
    "List": ("status", "mode"),
    "DocumentReference": ("status", "content"),
}
#: the element naming the patient, per type (when a provider leaves it out, the
#: record's own Patient is meant: a structured record is about one person)
PATIENT_LINK = {
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
    "Condition": "subject",
    "MedicationStatement": "subject",
    "MedicationRequest": "subject",
    "Observation": "subject",
    "DiagnosticReport": "subject",
    "ServiceRequest": "subject",
    "Encounter": "subject",
    "List": "subject",
    "Specimen": "subject",
}
RENAMED_TYPES = {"ProcedureRequest": "ServiceRequest", "ReferralRequest": "ServiceRequest"}
#: STU3 request statuses that R4 renamed
REQUEST_STATUS = {"suspended": "on-hold", "cancelled": "revoked"}


@dataclass
class Converted:
    """One converted resource and the paths of elements R4 has no place for."""

    resource: Json
    dropped: list[str] = field(default_factory=list)


def _cc(system: str, code: object) -> Json:
    return {"coding": [{"system": system, "code": code}]}


def _rename(r: Json, old: str, new: str) -> None:
    if old in r:
        value = r.pop(old)
        r.setdefault(new, value)


def _listed(r: Json, key: str) -> None:
    if key in r and not isinstance(r[key], list):
        r[key] = [r[key]]


def _single(r: Json, key: str) -> None:
    if isinstance(r.get(key), list):
        r[key] = r[key][0] if r[key] else None
        if r[key] is None:
            del r[key]


def _context_to_encounter(r: Json) -> None:
    ctx = r.pop("context", None)
    if isinstance(ctx, dict) and str(ctx.get("reference", "")).startswith("Encounter/"):
        r.setdefault("encounter", ctx)
    elif ctx is not None:
        r.setdefault("extension", []).append(
            {
                "url": "https://carelink.example/StructureDefinition/stu3-context",
                "valueReference": ctx,
            }
        )


def _requester(r: Json) -> None:
    req = r.get("requester")
    if isinstance(req, dict) and "agent" in req:
        r["requester"] = req["agent"]


def _dosage(d: Json) -> Json:
    d = dict(d)
    pair: Json = {}
    for key in ("doseQuantity", "doseRange", "rateRatio", "rateRange", "rateQuantity"):
        if key in d:
            pair[key] = d.pop(key)
    if pair:
        d["doseAndRate"] = [pair]
    return d


def _allergy(r: Json) -> None:
    if isinstance(r.get("clinicalStatus"), str):
        r["clinicalStatus"] = _cc(TERMINOLOGY + "allergyintolerance-clinical", r["clinicalStatus"])
    if isinstance(r.get("verificationStatus"), str):
        r["verificationStatus"] = _cc(
            TERMINOLOGY + "allergyintolerance-verification", r["verificationStatus"]
        )
    _rename(r, "assertedDate", "recordedDate")


def _condition(r: Json) -> None:
    if isinstance(r.get("clinicalStatus"), str):
        r["clinicalStatus"] = _cc(TERMINOLOGY + "condition-clinical", r["clinicalStatus"])
    status = r.get("verificationStatus")
    if isinstance(status, str):
        if status == "unknown":
            del r["verificationStatus"]
        else:
            r["verificationStatus"] = _cc(TERMINOLOGY + "condition-ver-status", status)
    _rename(r, "assertedDate", "recordedDate")
    _context_to_encounter(r)
    if r.pop("abatementBoolean", None) is True and "clinicalStatus" not in r:
        r["clinicalStatus"] = _cc(TERMINOLOGY + "condition-clinical", "resolved")
    _listed(r, "stage")


def _medication_statement(r: Json) -> None:
    r.pop("taken", None)
    _rename(r, "reasonNotTaken", "statusReason")
    if "dosage" in r:
        r["dosage"] = [_dosage(d) for d in r["dosage"]]


def _medication_request(r: Json) -> None:
    _context_to_encounter(r)
    _requester(r)
    _listed(r, "category")
    if "dosageInstruction" in r:
        r["dosageInstruction"] = [_dosage(d) for d in r["dosageInstruction"]]
    sub = r.get("substitution")
    if isinstance(sub, dict):
        _rename(sub, "allowed", "allowedBoolean")


def _medication(r: Json) -> None:
    for ing in r.get("ingredient", []):
        _rename(ing, "amount", "strength")
    package = r.pop("package", None)
    if isinstance(package, dict) and package.get("batch"):
        r.setdefault("batch", package["batch"][0])


def _encounter(r: Json) -> None:
    _rename(r, "reason", "reasonCode")
    _rename(r, "incomingReferral", "basedOn")
    for d in r.get("diagnosis", []):
        _rename(d, "role", "use")
    _listed(r, "appointment")
    if "class" not in r:
        # R4 requires a class; GP Connect consultations are ambulatory
        r["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}


def _immunization(r: Json) -> None:
    if r.pop("notGiven", False) is True:
        r["status"] = "not-done"
    r.setdefault("status", "completed")
    _rename(r, "date", "occurrenceDateTime")
    if not any(k.startswith("occurrence") for k in r):
        r["occurrenceString"] = "unknown"
    if "practitioner" in r:
        r["performer"] = [
            {("function" if k == "role" else k): v for k, v in p.items()}
            for p in r.pop("practitioner")
        ]
    why = r.pop("explanation", None) or {}
    if why.get("reason"):
        r["reasonCode"] = why["reason"]
    if why.get("reasonNotGiven"):
        r["statusReason"] = why["reasonNotGiven"][0]
    protocols = r.pop("vaccinationProtocol", None)
    if protocols:
        r["protocolApplied"] = [
            {
                **{k: p[k] for k in ("series", "authority", "targetDisease") if k in p},
                "doseNumberPositiveInt": p.get("doseSequence", 1),
                **({"seriesDosesPositiveInt": p["seriesDoses"]} if "seriesDoses" in p else {}),
            }
            for p in protocols
        ]


def _observation_like(r: Json) -> None:
    _listed(r, "interpretation")
    for c in r.get("component", []):
        _listed(c, "interpretation")


def _observation(r: Json) -> None:
    _context_to_encounter(r)
    comment = r.pop("comment", None)
    if comment:
        r.setdefault("note", []).append({"text": comment})
    for rel in r.pop("related", []):
        key = {"has-member": "hasMember", "derived-from": "derivedFrom"}.get(rel.get("type"))
        if key and "target" in rel:
            r.setdefault(key, []).append(rel["target"])
        elif "target" in rel:
            r.setdefault("derivedFrom", []).append(rel["target"])
    _observation_like(r)


def _diagnostic_report(r: Json) -> None:
    _context_to_encounter(r)
    _listed(r, "category")
    if "performer" in r:
        r["performer"] = [
            p["actor"] for p in r["performer"] if isinstance(p, dict) and "actor" in p
        ]
    _rename(r, "codedDiagnosis", "conclusionCode")
    _rename(r, "image", "media")


def _request_status(r: Json) -> None:
    if r.get("status") in REQUEST_STATUS:
        r["status"] = REQUEST_STATUS[r["status"]]


def _bare_occurrence(r: Json) -> None:
    """Published quirk: ``occurrence`` without its type suffix."""
    when = r.pop("occurrence", None)
    if isinstance(when, dict):
        r.setdefault("occurrencePeriod", when)
    elif isinstance(when, str):
        r.setdefault("occurrenceDateTime", when)


def _procedure_request(r: Json) -> None:
    _bare_occurrence(r)
    r["resourceType"] = "ServiceRequest"
    _request_status(r)
    _context_to_encounter(r)
    _requester(r)
    _listed(r, "performer")


def _referral_request(r: Json) -> None:
    r["resourceType"] = "ServiceRequest"
    _request_status(r)
    _context_to_encounter(r)
    _requester(r)
    category = [c for c in (r.pop("type", None), *r.pop("specialty", [None])) if c]
    if category:
        r.setdefault("category", []).extend(category)
    wanted = r.pop("serviceRequested", [])
    if wanted:
        r["code"] = wanted[0]
        if wanted[1:]:
            r["orderDetail"] = wanted[1:]
    _rename(r, "groupIdentifier", "requisition")
    _rename(r, "recipient", "performer")
    description = r.pop("description", None)
    if description:
        r.setdefault("note", []).append({"text": description})
    r.setdefault("intent", "order")


def _document_reference(r: Json) -> None:
    klass = r.pop("class", None)
    if klass:
        r.setdefault("category", []).append(klass)
    _rename(r, "indexed", "date")
    created = r.pop("created", None)
    ctx = r.get("context")
    if isinstance(ctx, dict):
        _listed(ctx, "encounter")
        ctx["related"] = [
            x.get("ref") or {"identifier": x["identifier"]}
            for x in ctx.get("related", [])
            if x.get("ref") or x.get("identifier")
        ]
        if not ctx["related"]:
            del ctx["related"]
    if created:
        ctx = r.setdefault("context", {})
        ctx.setdefault("period", {"start": created})


def _healthcare_service(r: Json) -> None:
    _listed(r, "category")
    eligibility, note = r.pop("eligibility", None), r.pop("eligibilityNote", None)
    if eligibility or note:
        r["eligibility"] = [
            {
                **({"code": eligibility} if eligibility else {}),
                **({"comment": note} if note else {}),
            }
        ]
    programs = r.pop("programName", None)
    if programs:
        r["program"] = [{"text": p} for p in programs]


def _patient(r: Json) -> None:
    r.pop("animal", None)
    _listed(r, "generalPractitioner")


CONVERTERS: dict[str, Callable[[Json], None]] = {
    "AllergyIntolerance": _allergy,
    "Condition": _condition,
    "MedicationStatement": _medication_statement,
    "MedicationRequest": _medication_request,
    "Medication": _medication,
    "Encounter": _encounter,
    "Immunization": _immunization,
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "ProcedureRequest": _procedure_request,
    "ReferralRequest": _referral_request,
    "DocumentReference": _document_reference,
    "HealthcareService": _healthcare_service,
    "Patient": _patient,
}


def _may_rename(resource: Json) -> bool:
    """Whether a reference to a renamed type may be inside (one C-speed dump beats the
    walk; a Patient of a practice list has none)."""
    try:
        text = orjson.dumps(resource)
    except (TypeError, orjson.JSONEncodeError):
        return True
    return any(f"{old}/".encode() in text for old in RENAMED_TYPES)


def _rewrite_refs(value: Any) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            head, sep, rest = ref.partition("/")
            if sep and head in RENAMED_TYPES:
                value["reference"] = f"{RENAMED_TYPES[head]}/{rest}"
        for v in value.values():
            _rewrite_refs(v)
    elif isinstance(value, list):
        for v in value:
            _rewrite_refs(v)


def missing(resource: Json) -> list[str]:
    """The required R4 elements ``resource`` lacks."""
    out = []
    for name in REQUIRED.get(str(resource.get("resourceType")), ()):
        if name.endswith("[x]"):
            stem = name[:-3]
            if not any(
                k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper() for k in resource
            ):
                out.append(name)
        elif resource.get(name) in (None, [], {}, ""):
            out.append(name)
    return out


def _copy(doc: Json) -> Json:
    """A deep copy of parsed JSON (orjson's, with the standard library's for what orjson
    does not write, e.g. integers beyond 64 bits)."""
    try:
        copied: Json = orjson.loads(orjson.dumps(doc))
    except (TypeError, orjson.JSONEncodeError):
        copied = json.loads(json.dumps(doc))
    return copied


def to_r4(stu3: Json, *, owned: bool = False) -> Converted:
    """``stu3`` as an R4 resource, with what could not be kept. ``stu3`` is not changed
    unless ``owned``: a caller that owns the dict (it parsed it and keeps no other use
    for it) saves the copy, and ``stu3``'s parts become the result's."""
    r: Json = stu3 if owned else _copy(stu3)
    stu3_type = str(r.get("resourceType"))
    if isinstance(r.get("id"), str) and r["id"].startswith(stu3_type + "/"):
        r["id"] = r["id"].removeprefix(stu3_type + "/")  # published quirk: "Type/id" as id
    _drop_profiles(r)
    contained = [to_r4(c, owned=True) for c in r.pop("contained", []) if isinstance(c, dict)]
    convert = CONVERTERS.get(stu3_type)
    if convert is not None:
        convert(r)
    if _may_rename(r):
        _rewrite_refs(r)
    dropped: list[str] = []
    out = prune(r, r["resourceType"], r["resourceType"], dropped)
    if contained:
        out["contained"] = [c.resource for c in contained]
        for c in contained:
            dropped.extend(f"{out['resourceType']}.contained.{d}" for d in c.dropped)
    return Converted(out, dropped)


def listed_patient(patient: Json) -> Json:
    """A Patient of a practice list as R4: ``to_r4(patient, owned=True).resource``, the
    caller's dict (which it parsed and keeps no other use for) changed in place. What
    ``to_r4`` does to every Patient (its profiles gone, ``animal`` gone, one
    ``generalPractitioner`` listed) is done here; when the rest would change nothing
    (``kept_whole``, no reference to a renamed type) the Patient is kept as it is, and
    otherwise ``to_r4`` converts it (those steps done twice change nothing)."""
    rid = patient.get("id")
    if (
        patient.get("resourceType") != "Patient"
        or "contained" in patient
        or (isinstance(rid, str) and rid.startswith("Patient/"))
    ):
        return to_r4(patient, owned=True).resource
    _drop_profiles(patient)
    _patient(patient)
    if kept_whole(patient, "Patient") and not _may_rename(patient):
        return patient
    return to_r4(patient, owned=True).resource


def _drop_profiles(r: Json) -> None:
    """``r``'s STU3 profiles gone from ``meta.profile`` (in place), and ``meta`` with
    them when nothing else is left in it."""
    meta = r.get("meta")
    if isinstance(meta, dict):
        meta.pop("profile", None)
        if not meta:
            del r["meta"]
