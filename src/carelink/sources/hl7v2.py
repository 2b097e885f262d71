"""HL7 v2 batches from the community trust, turned into FHIR R4.

Parsing is python-hl7's (segments, delimiters, escape sequences); this
module reads the fields the community system uses (see
``carelink.simulators.community`` for the message shapes) and maps:

- ``ADT^A28`` PID -> ``Patient``
- ``ADT^A01`` + ``ZEP`` -> ``EpisodeOfCare``
- ``ADT^A03`` PV1 -> ``Encounter`` (a contact, linked to its episode)
- ``PPR^PC1`` PRB -> ``Condition`` (SNOMED CT + ICD-10; PRB-25 sensitivity)
- ``ORU^R01`` OBX -> ``Observation`` (SNOMED CT, LOINC as the alternate code; sensitivity
  from a following ZSN)
"""

from __future__ import annotations

from typing import Any

import hl7

from carelink.errors import SourceBadPayload
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import Json, local_id_system, security_labels, source_uri
from carelink.sources.namespacing import namespaced_id

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CODE_SYSTEMS = {"SCT": SNOMED, "I10": ICD10, "LN": LOINC}
SURVEY_CODES = {"720433000", "44261-6"}  # PHQ-9 total score: SNOMED CT, LOINC
_BATCH = ("FHS", "BHS", "BTS", "FTS")
HL7_ER7 = "x-application/hl7-v2+er7"


def _messages(data: bytes, source: str) -> list[list[str]]:
    """A batch's messages, each a list of segments (batch header and trailer left out)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceBadPayload(source, "HL7 batch is not UTF-8") from exc
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    messages: list[list[str]] = []
    for seg in segments:
        if seg[:3] in _BATCH:
            continue
        if seg.startswith("MSH"):
            messages.append([seg])
        elif messages:
            messages[-1].append(seg)
        else:
            raise SourceBadPayload(source, f"segment {seg[:3]!r} before any MSH")
    if not messages:
        raise SourceBadPayload(source, "no HL7 message in the answer")
    return messages


def read_batch(data: bytes, source: str) -> tuple[list[Any], tuple[str, ...]]:
    """The messages of a batch, parsed, and those left out (``"message 3: unparseable HL7
    (ParseException)"``). A batch that is not text or holds no message is a bad payload."""
    messages = _messages(data, source)
    parsed: list[Any] = []
    skipped: list[str] = []
    for n, m in enumerate(messages, start=1):
        try:
            parsed.append(hl7.parse("\r".join(m)))
        except Exception as exc:  # python-hl7 raises several kinds on broken input
            skipped.append(f"message {n}: unparseable HL7 ({type(exc).__name__})")
    return parsed, tuple(skipped)


def split_messages(data: bytes, source: str) -> list[Any]:
    """The messages of a batch, parsed; anything unreadable is a bad payload."""
    parsed, skipped = read_batch(data, source)
    if skipped:
        raise SourceBadPayload(source, skipped[0])
    return parsed


class _Registration:
    """A message read only as far as its PID, by splitting on the standard delimiters:
    enough for ``person``, without python-hl7's full parse of every segment."""

    #: segment, field, repetition, component, subcomponent: the standard ones, as the
    #: listing is only split this way when MSH-2 declares them
    separators = "\r|~^&"

    def __init__(self, pid: list[str]) -> None:
        self._pid = pid

    def segment(self, name: str) -> list[str]:
        if name != "PID":
            raise KeyError(name)
        return self._pid

    def unescape(self, text: str) -> str:
        return text  # only made for a PID without escape sequences


def split_registrations(data: bytes, source: str) -> list[Any]:
    """The messages of a patient listing, for ``person`` only. A message with the standard
    delimiters and no escape sequence in its PID is split, not parsed (the listing's cost
    is then the network's); any other is parsed in full, as ``split_messages`` does."""
    out: list[Any] = []
    for m in _messages(data, source):
        pids = [seg for seg in m if seg.startswith("PID|")]
        if len(pids) == 1 and "\\" not in pids[0] and m[0].startswith("MSH|^~\\&|"):
            out.append(_Registration(pids[0].split("|")))
            continue
        try:
            out.append(hl7.parse("\r".join(m)))
        except Exception as exc:  # python-hl7 raises several kinds on broken input
            raise SourceBadPayload(source, f"unparseable HL7 ({type(exc).__name__})") from exc
    return out


def field(msg: Any, seg: Any, n: int) -> list[list[str]]:
    """Field ``n`` of a segment as repetitions of unescaped components.

    The repetition and component separators are the message's own (MSH-2, as
    python-hl7 read them into ``msg.separators``: segment, field, repetition,
    component, subcomponent), and so is the escape character the escapes
    (``\\F\\`` ``\\S\\`` ``\\T\\`` ``\\R\\`` ``\\E\\`` with the default one) are decoded with.
    """
    try:
        raw = str(seg[n])
    except IndexError:
        return [[""]]
    repetition, component = msg.separators[2], msg.separators[3]
    return [[msg.unescape(c) for c in rep.split(component)] for rep in raw.split(repetition)]


def value(msg: Any, seg: Any, n: int, comp: int = 1) -> str:
    """One component of the first repetition (1-based), or ''."""
    reps = field(msg, seg, n)
    comps = reps[0]
    return comps[comp - 1] if len(comps) >= comp else ""


def fhir_datetime(dtm: str) -> str | None:
    """``YYYYMMDD[HHMM[SS]][+ZZZZ]`` to a FHIR date or dateTime."""
    if len(dtm) < 8 or not dtm[:8].isdigit():
        return None
    date = f"{dtm[:4]}-{dtm[4:6]}-{dtm[6:8]}"
    rest = dtm[8:]
    zone = ""
    for sign in "+-":
        if sign in rest:
            rest, _, z = rest.partition(sign)
            zone = f"{sign}{z[:2]}:{z[2:4]}"
    if len(rest) < 4:
        return date
    seconds = rest[4:6] or "00"
    return f"{date}T{rest[:2]}:{rest[2:4]}:{seconds}{zone or '+00:00'}"


def message_type(msg: Any) -> str:
    """``ADT^A28`` from MSH-9."""
    msh = msg.segment("MSH")
    return f"{value(msg, msh, 9, 1)}^{value(msg, msh, 9, 2)}"


def person_id(msg: Any) -> str:
    """The local (MR) identifier in a message's PID-3, or ''."""
    return _local_id(msg, msg.segment("PID"), 3)


def prior_id(msg: Any) -> str:
    """The local (MR) identifier a merge (``ADT^A40``) retires: MRG-1, or ''."""
    return _local_id(msg, msg.segment("MRG"), 1)


def _local_id(msg: Any, seg: Any, n: int) -> str:
    for rep in field(msg, seg, n):
        if len(rep) > 4 and rep[4] == "MR":
            return rep[0]
    return ""


def has_segment(msg: Any, name: str) -> bool:
    """Whether the message holds a segment called ``name``."""
    return any(str(seg[0]) == name for seg in msg)


def control_id(msg: Any) -> str:
    """MSH-10, the sender's id for this message."""
    return value(msg, msg.segment("MSH"), 10)


def person(msg: Any, source: str) -> tuple[str, str | None, Json]:
    """The local id, NHS number and Patient from a message's PID."""
    pid = msg.segment("PID")
    local, nhs = "", None
    for rep in field(msg, pid, 3):
        kind = rep[4] if len(rep) > 4 else ""
        if kind == "MR":
            local = rep[0]
        elif kind == "NH":
            nhs = rep[0]
    if not local:
        raise SourceBadPayload(source, "PID-3 without a local (MR) identifier")
    name = field(msg, pid, 5)[0]
    identifiers: list[Json] = []
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    identifiers.append({"system": local_id_system(source), "value": local})
    patient: Json = {
        "resourceType": "Patient",
        "id": namespaced_id(source, local),
        "meta": {"source": source_uri(source)},
        "identifier": identifiers,
        "name": [{"use": "official", "family": name[0], "given": [g for g in name[1:3] if g]}],
        "gender": {"M": "male", "F": "female"}.get(value(msg, pid, 8), "unknown"),
    }
    born = fhir_datetime(value(msg, pid, 7))
    if born:
        patient["birthDate"] = born[:10]
    addr = field(msg, pid, 11)[0]
    if any(addr):
        address: Json = {"use": "home"}
        if addr[0]:
            address["line"] = [addr[0]]
        if len(addr) > 2 and addr[2]:
            address["city"] = addr[2]
        if len(addr) > 4 and addr[4]:
            address["postalCode"] = addr[4]
        patient["address"] = [address]
    phone = value(msg, pid, 13)
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    return local, nhs, patient


def _coding(comps: list[str], offset: int) -> Json | None:
    if len(comps) <= offset or not comps[offset]:
        return None
    system = CODE_SYSTEMS.get(comps[offset + 2] if len(comps) > offset + 2 else "", "")
    out: Json = {"code": comps[offset]}
    if system:
        out["system"] = system
    if len(comps) > offset + 1 and comps[offset + 1]:
        out["display"] = comps[offset + 1]
    return out


def _concept(comps: list[str]) -> Json:
    codings = [c for c in (_coding(comps, 0), _coding(comps, 3)) if c]
    return {"coding": codings, "text": comps[1] if len(comps) > 1 else codings[0]["code"]}


def _meta(source: str, sensitivity: str) -> Json:
    meta: Json = {"source": source_uri(source)}
    if sensitivity:
        meta["security"] = security_labels(sensitivity)
    return meta


#: what reading a segment the source got wrong raises (python-hl7 and our own checks)
UNREADABLE = (IndexError, KeyError, ValueError, TypeError, SourceBadPayload)


def resources(msg: Any, source: str, patient_ref: str) -> list[Json]:
    """The clinical resources one message carries (not its Patient); any unreadable
    segment is a bad payload (``message_resources`` leaves it out instead)."""
    out, skipped = message_resources(msg, source, patient_ref)
    if skipped:
        raise SourceBadPayload(source, skipped[0])
    return out


def message_resources(
    msg: Any, source: str, patient_ref: str
) -> tuple[list[Json], tuple[str, ...]]:
    """The clinical resources one message carries (not its Patient), and the segments left
    out and why: one PRB or OBX that cannot be read costs only its own resource."""
    kind = message_type(msg)
    subject = {"reference": patient_ref}
    if kind == "PPR^PC1":
        conditions: list[Json] = []
        skipped: list[str] = []
        for n, prb in enumerate(msg.segments("PRB"), start=1):
            try:
                conditions.append(_condition(msg, prb, source, subject))
            except UNREADABLE as exc:
                skipped.append(f"{kind} PRB {n}: {why_unreadable(exc)}")
        return conditions, tuple(skipped)
    if kind == "ORU^R01":
        return _observations(msg, source, subject)
    return _event(kind, msg, source, subject), ()


def why_unreadable(exc: Exception) -> str:
    """A reason that names what was wrong, never the data."""
    return exc.reason if isinstance(exc, SourceBadPayload) else type(exc).__name__


def _required(msg: Any, seg: Any, n: int, source: str, what: str) -> str:
    """A field the resource's id comes from: without it the resource would have no id."""
    got = value(msg, seg, n)
    if not got:
        raise SourceBadPayload(source, f"no {what}")
    return got


def _event(kind: str, msg: Any, source: str, subject: Json) -> list[Json]:
    out: list[Json] = []
    if kind == "ADT^A01" and has_segment(msg, "ZEP"):  # the trust's episode of care
        zep = msg.segment("ZEP")
        team = field(msg, zep, 2)[0]
        episode: Json = {
            "resourceType": "EpisodeOfCare",
            "id": namespaced_id(source, _required(msg, zep, 1, source, "episode id (ZEP-1)")),
            "meta": _meta(source, value(msg, zep, 5)),
            "status": value(msg, zep, 4) or "active",
            "type": [{"text": team[1] if len(team) > 1 else team[0]}],
            "patient": subject,
            "managingOrganization": {"display": "Community and mental health trust"},
        }
        start = fhir_datetime(value(msg, zep, 3))
        if start:
            episode["period"] = {"start": start}
        out.append(episode)
    elif kind == "ADT^A03":
        pv1 = msg.segment("PV1")
        service = value(msg, pv1, 10)
        enc: Json = {
            "resourceType": "Encounter",
            "id": namespaced_id(source, _required(msg, pv1, 19, source, "visit number (PV1-19)")),
            "meta": _meta(source, ""),
            "status": "finished",
            "class": (
                {"system": ACT_CODE, "code": "HH", "display": "home health"}
                if service == "DN"
                else {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"}
            ),
            "serviceType": {"text": service},
            "subject": subject,
        }
        period = {
            k: v
            for k, v in (
                ("start", fhir_datetime(value(msg, pv1, 44))),
                ("end", fhir_datetime(value(msg, pv1, 45))),
            )
            if v
        }
        if period:
            enc["period"] = period
        episode_id = value(msg, pv1, 50)
        if episode_id:
            enc["episodeOfCare"] = [
                {"reference": f"EpisodeOfCare/{namespaced_id(source, episode_id)}"}
            ]
        out.append(enc)
    return out


def _condition(msg: Any, prb: Any, source: str, subject: Json) -> Json:
    """One PRB segment as a Condition."""
    if not value(msg, prb, 4):
        raise SourceBadPayload(source, "no problem id (PRB-4)")
    cond: Json = {
        "resourceType": "Condition",
        "id": namespaced_id(source, value(msg, prb, 4)),
        "meta": _meta(source, value(msg, prb, 25)),
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": value(msg, prb, 14) or "active",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": _concept(field(msg, prb, 3)[0]),
        "subject": subject,
    }
    onset = fhir_datetime(value(msg, prb, 16))
    recorded = fhir_datetime(value(msg, prb, 2))
    if onset:
        cond["onsetDateTime"] = onset
    if recorded:
        cond["recordedDate"] = recorded
    return cond


def _observations(msg: Any, source: str, subject: Json) -> tuple[list[Json], tuple[str, ...]]:
    """Each OBX as an Observation (a following ZSN labels its sensitivity); an OBX that
    cannot be read is left out, and so is the ZSN after it, so no label lands on the
    wrong Observation."""
    out: list[Json] = []
    skipped: list[str] = []
    order = value(msg, msg.segment("OBR"), 3)
    current: Json | None = None
    n = 0
    for seg in msg:
        name = str(seg[0])
        if name == "OBX":
            n += 1
            try:
                current = _observation(msg, seg, source, subject, order)
            except UNREADABLE as exc:
                current = None
                skipped.append(f"ORU^R01 OBX {n}: {why_unreadable(exc)}")
                continue
            out.append(current)
        elif name == "ZSN" and current is not None:
            current["meta"] = _meta(source, value(msg, seg, 1))
    return out, tuple(skipped)


def _observation(msg: Any, seg: Any, source: str, subject: Json, order: str) -> Json:
    if not value(msg, seg, 1):
        raise SourceBadPayload(source, "no set id (OBX-1)")
    comps = field(msg, seg, 3)[0]
    if not comps[0]:
        raise SourceBadPayload(source, "no code (OBX-3)")
    code = comps[0]
    category = "survey" if code in SURVEY_CODES else "vital-signs"
    current: Json = {
        "resourceType": "Observation",
        "id": namespaced_id(source, f"{order}-{value(msg, seg, 1)}"),
        "meta": _meta(source, ""),
        "status": {"F": "final", "P": "preliminary", "C": "corrected"}.get(
            value(msg, seg, 11), "unknown"
        ),
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": _concept(comps),
        "subject": subject,
    }
    when = fhir_datetime(value(msg, seg, 14))
    if when:
        current["effectiveDateTime"] = when
    raw, unit = value(msg, seg, 5), value(msg, seg, 6)
    try:
        current["valueQuantity"] = {
            "value": float(raw),
            "unit": unit,
            "system": UCUM,
            "code": unit,
        }
    except ValueError:
        current["valueString"] = raw
    return current
