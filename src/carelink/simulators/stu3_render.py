"""The GP simulator's R4 records rendered as a GP Connect provider sends them: STU3.

``down`` undoes what a consumer's STU3 -> R4 conversion does, for the resource
types the population and R4 data files hold; ``structured_bundle`` lays a record
out as the published examples do: the Patient first, then the clinical
resources, then one section ``List`` per clinical area, then the Practitioners,
Organizations ... they refer to. Types no GP Connect area carries (Procedure,
CarePlan ...) are not sent.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from carelink.fhir.gpconnect import BUNDLE_PROFILE, SECTION_LISTS, SNOMED

Json = dict[str, Any]
REFERRAL = "3457005"
#: STU3 type -> the section List it is listed in
SECTION_OF = {
    "AllergyIntolerance": "886921000000105",
    "MedicationStatement": "933361000000108",
    "Encounter": "1149501000000101",
    "Condition": "717711000000103",
    "Immunization": "1102181000000102",
    "Observation": "826501000000100",
    "DiagnosticReport": "887191000000108",
    "ReferralRequest": "886721000000107",
    "ProcedureRequest": "887191000000108",
}
SENT = set(SECTION_OF) | {
    "Patient",
    "MedicationRequest",
    "Medication",
    "Specimen",
    "List",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "DocumentReference",
}


def _code(cc: Any) -> Any:
    if isinstance(cc, dict):
        return next((c.get("code") for c in cc.get("coding", [])), None)
    return cc


def _first(r: Json, key: str) -> None:
    if isinstance(r.get(key), list):
        r[key] = r[key][0] if r[key] else None
        if r[key] is None:
            del r[key]


def _move(r: Json, old: str, new: str) -> None:
    if old in r:
        r[new] = r.pop(old)


def _dosage(d: Json) -> Json:
    d = dict(d)
    for pair in d.pop("doseAndRate", [])[:1]:
        d.update(pair)
    return d


def _allergy(r: Json) -> None:
    r["clinicalStatus"] = _code(r.get("clinicalStatus")) or "active"
    r["verificationStatus"] = _code(r.get("verificationStatus")) or "unconfirmed"
    _move(r, "recordedDate", "assertedDate")
    r.pop("encounter", None)


def _condition(r: Json) -> None:
    for key in ("clinicalStatus", "verificationStatus"):
        if key in r:
            r[key] = _code(r[key])
    _move(r, "encounter", "context")
    _move(r, "recordedDate", "assertedDate")


def _medication_request(r: Json) -> None:
    _move(r, "encounter", "context")
    if isinstance(r.get("requester"), dict):
        r["requester"] = {"agent": r["requester"]}
    _first(r, "category")
    r["dosageInstruction"] = [_dosage(d) for d in r.get("dosageInstruction", [])]
    sub = r.get("substitution")
    if isinstance(sub, dict):
        _move(sub, "allowedBoolean", "allowed")


def _medication_statement(r: Json) -> None:
    _move(r, "statusReason", "reasonNotTaken")
    r["dosage"] = [_dosage(d) for d in r.get("dosage", [])]
    r.setdefault("taken", "unk")


def _medication(r: Json) -> None:
    for ing in r.get("ingredient", []):
        _move(ing, "strength", "amount")
    if "batch" in r:
        r["package"] = {"batch": [r.pop("batch")]}


def _encounter(r: Json) -> None:
    _move(r, "reasonCode", "reason")
    _move(r, "basedOn", "incomingReferral")
    for d in r.get("diagnosis", []):
        _move(d, "use", "role")


def _immunization(r: Json) -> None:
    r["notGiven"] = r.get("status") == "not-done"
    r["status"] = "completed" if r.get("status") != "entered-in-error" else "entered-in-error"
    _move(r, "occurrenceDateTime", "date")
    r.pop("occurrenceString", None)
    if "performer" in r:
        r["practitioner"] = [
            {("role" if k == "function" else k): v for k, v in p.items()}
            for p in r.pop("performer")
        ]
    why: Json = {}
    if "reasonCode" in r:
        why["reason"] = r.pop("reasonCode")
    if "statusReason" in r:
        why["reasonNotGiven"] = [r.pop("statusReason")]
    if why:
        r["explanation"] = why
    protocols = r.pop("protocolApplied", None)
    if protocols:
        r["vaccinationProtocol"] = [
            {
                **{k: p[k] for k in ("series", "authority", "targetDisease") if k in p},
                "doseSequence": p.get("doseNumberPositiveInt", 1),
            }
            for p in protocols
        ]
    r.setdefault("primarySource", True)


def _observation(r: Json) -> None:
    _move(r, "encounter", "context")
    notes = r.pop("note", [])
    if notes:
        r["comment"] = notes[0].get("text", "")
    related = [{"type": "has-member", "target": t} for t in r.pop("hasMember", [])]
    related += [{"type": "derived-from", "target": t} for t in r.pop("derivedFrom", [])]
    if related:
        r["related"] = related
    _first(r, "interpretation")
    for c in r.get("component", []):
        _first(c, "interpretation")


def _diagnostic_report(r: Json) -> None:
    _move(r, "encounter", "context")
    _first(r, "category")
    if "performer" in r:
        r["performer"] = [{"actor": p} for p in r["performer"]]
    _move(r, "conclusionCode", "codedDiagnosis")
    _move(r, "media", "image")


def _service_request(r: Json) -> None:
    status = {"on-hold": "suspended", "revoked": "cancelled"}
    r["status"] = status.get(r.get("status", ""), r.get("status", "active"))
    _move(r, "encounter", "context")
    if isinstance(r.get("requester"), dict):
        r["requester"] = {"agent": r["requester"]}
    codes = {c.get("code") for cc in r.get("category", []) for c in cc.get("coding", [])}
    if REFERRAL in codes:
        r["resourceType"] = "ReferralRequest"
        if "code" in r:
            r["serviceRequested"] = [r.pop("code")]
        _move(r, "performer", "recipient")
        _move(r, "requisition", "groupIdentifier")
        category = r.pop("category", [])
        if category:
            r["type"] = category[0]
    else:
        r["resourceType"] = "ProcedureRequest"
        _first(r, "performer")


DOWN: dict[str, Callable[[Json], None]] = {
    "AllergyIntolerance": _allergy,
    "Condition": _condition,
    "MedicationRequest": _medication_request,
    "MedicationStatement": _medication_statement,
    "Medication": _medication,
    "Encounter": _encounter,
    "Immunization": _immunization,
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "ServiceRequest": _service_request,
}


def sent_as_is(r4: Json) -> bool:
    """Whether a resource goes out in STU3 exactly as it is in R4 (a Patient, a
    Practitioner ...): such a resource needs neither ``down`` nor its copy."""
    return r4.get("resourceType") not in DOWN


def down(r4: Json) -> Json:
    """One R4 resource as STU3 (a copy), references to ServiceRequests left as they are
    (``stu3_types`` fixes them once the record's types are known)."""
    r: Json = orjson.loads(orjson.dumps(r4))  # a deep copy of JSON data, several times faster
    convert = DOWN.get(str(r.get("resourceType")))
    if convert is not None:
        convert(r)
    return r


def _retarget(value: Any, types: dict[str, str]) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("ServiceRequest/"):
            rid = ref.split("/", 1)[1]
            value["reference"] = f"{types.get(rid, 'ProcedureRequest')}/{rid}"
        for v in value.values():
            _retarget(v, types)
    elif isinstance(value, list):
        for v in value:
            _retarget(v, types)


def section_lists(patient_id: str, resources: list[Json]) -> list[Json]:
    """One section List per clinical area present, listing its items."""
    items: dict[str, list[Json]] = {}
    for r in resources:
        section = SECTION_OF.get(r["resourceType"])
        if section is None and r["resourceType"] == "MedicationRequest":
            section = SECTION_OF["MedicationStatement"]
        if section is not None and "id" in r:
            ref = {"reference": f"{r['resourceType']}/{r['id']}"}
            items.setdefault(section, []).append({"item": ref})
    return [
        {
            "resourceType": "List",
            "id": f"section-{code}",
            "meta": {
                "profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/CareConnect-GPC-List-1"]
            },
            "status": "current",
            "mode": "snapshot",
            "title": SECTION_LISTS[code],
            "code": {"coding": [{"system": SNOMED, "code": code, "display": SECTION_LISTS[code]}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "entry": entries,
        }
        for code, entries in items.items()
    ]


def structured_bundle(record: list[Json], shared: list[Json], extra: list[Json]) -> Json:
    """A structured record Bundle: Patient, clinical items, section Lists, then ``shared``
    (what they refer to) and ``extra`` (the provider's warnings)."""
    stu3 = [down(r) for r in record if r["resourceType"] in SENT or r["resourceType"] in DOWN]
    stu3 = [r for r in stu3 if r["resourceType"] in SENT]
    kinds = {str(r["id"]): r["resourceType"] for r in stu3 if "id" in r}
    for r in stu3:
        _retarget(r, kinds)
    lists = section_lists(str(stu3[0]["id"]), stu3[1:])
    rest = [down(r) for r in shared]
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [BUNDLE_PROFILE]},
        "type": "collection",
        "entry": [{"resource": r} for r in [*stu3, *lists, *rest, *extra]],
    }


class RenderedBundles:
    """Structured record Bundles as bytes, each rendered once while its inputs stay the
    very same resource objects (the population store keeps each record it rendered), so
    the simulator does not convert the same record again for every request: the bytes
    are those ``structured_bundle`` makes, and rendering again would make the same.
    At most ``maxsize`` are kept, the least recently used going first."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        #: per key: the inputs, the warnings' JSON, the bytes and their ETag once asked for
        self._items: OrderedDict[Hashable, list[Any]] = OrderedDict()

    def bundle(
        self, key: Hashable, record: list[Json], shared: list[Json], extra: list[Json]
    ) -> bytes:
        """``structured_bundle(record, shared, extra)`` serialised; ``key`` names the
        question (whose record, which types)."""
        body: bytes = self._kept(key, record, shared, extra)[2]
        return body

    def tagged(
        self,
        key: Hashable,
        record: list[Json],
        shared: list[Json],
        extra: list[Json],
        tag: Callable[[bytes], str],
    ) -> tuple[bytes, str]:
        """``bundle(...)`` and ``tag`` of its bytes (their ETag), made once with them."""
        kept = self._kept(key, record, shared, extra)
        if kept[3] is None:
            kept[3] = tag(kept[2])
        body: bytes = kept[2]
        etag: str = kept[3]
        return body, etag

    def _kept(
        self, key: Hashable, record: list[Json], shared: list[Json], extra: list[Json]
    ) -> list[Any]:
        inputs = (*record, *shared)
        notes = orjson.dumps(extra)
        hit = self._items.get(key)
        if (
            hit is not None
            and hit[1] == notes
            and len(hit[0]) == len(inputs)
            and all(a is b for a, b in zip(hit[0], inputs, strict=True))
        ):
            self._items.move_to_end(key)
            return hit
        body = orjson.dumps(structured_bundle(record, shared, extra))
        kept = [inputs, notes, body, None]  # holds the inputs: their ids stay theirs
        self._items[key] = kept
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return kept
