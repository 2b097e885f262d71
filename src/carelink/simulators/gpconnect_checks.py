"""What a GP Connect provider checks before it answers, and the error it answers with.

``check_headers`` plays the Spine Secure Proxy and the provider's front door (media
type, the four ``Ssp-*`` headers, the unsigned JWT and its claims);
``check_parameters`` reads the STU3 ``Parameters`` against the operation's rules.
Each returns a ``Refusal`` (HTTP status and ``OperationOutcome``) or what it read.
The rules are those of ``tests/data/gpconnect/FACTS.md``, with two leniencies a
provider needs for the specification's own examples: ``medicationSearchFromDate``
is allowed beside ``includeConsultations`` (every predefined multi-area search
sends it), and a diary entries date in the past is accepted.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import orjson

from carelink.fhir.gpconnect import (
    GROUPS,
    JWT_LIFETIME,
    NOT_WITH_CONSULTATIONS,
    NOT_WITH_PROBLEMS,
    ODS_SYSTEM,
    SCOPE_READ,
    SDS_ROLE_PROFILE_SYSTEM,
    SDS_USER_SYSTEM,
    SPINE_CODES,
    SPINE_ERRORS,
    SSP_FROM,
    SSP_INTERACTION_ID,
    SSP_TO,
    SSP_TRACE_ID,
    spine_outcome,
    ssp_outcome,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid

Json = dict[str, Any]
CLAIMS = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "reason_for_request",
    "requested_scope",
    "requesting_device",
    "requesting_organization",
    "requesting_practitioner",
)
_WHOLE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SCOPE = re.compile(r"^patient/\*\.read( conf/[NR])?$")
#: clock skew tolerated on ``iat``
SKEW = 60
#: parts the predefined multi-area searches send beside includeConsultations
MULTI_AREA = frozenset({"medicationSearchFromDate"})


@dataclass(frozen=True)
class Refusal:
    """An error answer: HTTP status and body."""

    status: int
    outcome: Json


@dataclass
class Asked:
    """A readable request: whose record, which groups with which parts, and warnings
    for what the provider does not recognise (answered in the Bundle, not refused)."""

    nhs_number: str
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _refuse(code: str, diagnostics: str) -> Refusal:
    return Refusal(SPINE_ERRORS[code].http, spine_outcome(code, diagnostics))


def _unb64(part: str) -> Any:
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@lru_cache(maxsize=64)
def _read_jwt(token: str) -> tuple[Any, Any, str] | None:
    """A JWT's header, claims and signature, read once per token (a consumer sends the
    same one for a while); None when it is not three base64url JSON parts. The claims
    are checked against the clock on every request all the same."""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        return _unb64(parts[0]), _unb64(parts[1]), parts[2]
    except (ValueError, orjson.JSONDecodeError):
        return None


def check_headers(
    headers: Any, interaction: str, now: int, reason: str = "directcare"
) -> Refusal | Json:
    """The request's headers and JWT as a provider checks them; the claims when good.

    Every check runs on every request, in this order; what follows the trace id is a
    function of the headers it reads, ``now`` (to the second) and what is asked, so its
    verdict is made once for each such question (a consumer sends the same JWT, and the
    same ASIDs, for many requests within a second) and looked up after that."""
    media = headers.get("content-type", "")
    if "application/fhir+json" not in media:
        return Refusal(415, ssp_outcome(415, "Unsupported Media Type"))
    trace = headers.get(SSP_TRACE_ID, "")
    try:
        uuid.UUID(trace)
    except ValueError:
        return _refuse("BAD_REQUEST", f"{SSP_TRACE_ID} must be a UUID")
    return _checked(
        headers.get(SSP_FROM, ""),
        headers.get(SSP_TO, ""),
        headers.get(SSP_INTERACTION_ID),
        headers.get("authorization", ""),
        interaction,
        now,
        reason,
    )


@lru_cache(maxsize=256)
def _checked(
    sender: str,
    receiver: str,
    interaction_id: str | None,
    auth: str,
    interaction: str,
    now: int,
    reason: str,
) -> Refusal | Json:
    """``check_headers`` after the trace id: the ASIDs, the interaction id, the JWT and
    its claims (the answer is shared by the requests asking the same: read, not changed)."""
    for name, value in ((SSP_FROM, sender), (SSP_TO, receiver)):
        if not value.strip():
            return _refuse("BAD_REQUEST", f"{name} header is required")
    if interaction_id != interaction:
        return _refuse("BAD_REQUEST", f"{SSP_INTERACTION_ID} must be {interaction}")
    if not auth.startswith("Bearer "):
        return _refuse("BAD_REQUEST", "Authorization: Bearer <JWT> is required")
    read = _read_jwt(auth.removeprefix("Bearer "))
    if read is None:
        return _refuse("BAD_REQUEST", "JWT is not three base64url JSON parts")
    head, claims, signature = read
    if not isinstance(head, dict) or head.get("alg") != "none" or signature:
        return _refuse("BAD_REQUEST", "JWT must be unsigned: alg none and an empty signature")
    problem = _claims_problem(claims, now, reason) if isinstance(claims, dict) else "not JSON"
    if problem:
        return _refuse("BAD_REQUEST", f"JWT {problem}")
    out: Json = claims
    return out


def _identifiers(resource: Json) -> dict[str, str]:
    return {
        str(i.get("system")): str(i.get("value"))
        for i in resource.get("identifier", [])
        if isinstance(i, dict) and i.get("value")
    }


def _claims_problem(c: Json, now: int, reason: str) -> str | None:
    lacking = [name for name in CLAIMS if c.get(name) in (None, "", {})]
    if lacking:
        return f"claims missing: {', '.join(lacking)}"
    if not isinstance(c["iat"], int) or not isinstance(c["exp"], int):
        return "iat and exp must be integers"
    if c["exp"] - c["iat"] != JWT_LIFETIME:
        return f"exp must be iat + {JWT_LIFETIME}"
    if c["exp"] <= now:
        return "has expired"
    if c["iat"] > now + SKEW:
        return "iat is in the future"
    if c["reason_for_request"] != reason:
        return f"reason_for_request must be {reason}"
    if not isinstance(c["requested_scope"], str) or not _SCOPE.match(c["requested_scope"]):
        return f"requested_scope must be {SCOPE_READ} (and a conf/ scope)"
    device, org, who = (
        c["requesting_device"],
        c["requesting_organization"],
        c["requesting_practitioner"],
    )
    if not (
        isinstance(device, dict)
        and device.get("resourceType") == "Device"
        and _identifiers(device)
        and device.get("model")
        and device.get("version")
    ):
        return "requesting_device must be a Device with identifier, model and version"
    if not (
        isinstance(org, dict)
        and org.get("resourceType") == "Organization"
        and ODS_SYSTEM in _identifiers(org)
    ):
        return "requesting_organization must be an Organization with an ODS code"
    if not isinstance(who, dict) or who.get("resourceType") != "Practitioner":
        return "requesting_practitioner must be a Practitioner"
    if who.get("id") != c["sub"]:
        return "sub must equal requesting_practitioner.id"
    ids = _identifiers(who)
    if reason != "migration" and not {SDS_USER_SYSTEM, SDS_ROLE_PROFILE_SYSTEM} <= set(ids):
        return "requesting_practitioner needs SDS user and role profile ids"
    if reason != "migration" and not who.get("name"):
        return "requesting_practitioner needs a name"
    return None


def _value(part: Json) -> tuple[str, Any] | None:
    for k, v in part.items():
        if k.startswith("value"):
            return k, v
    return None


def _date_problem(text: Any, today: date, name: str) -> str | None:
    if not isinstance(text, str) or not _WHOLE_DATE.match(text):
        return f"{name} must be a whole date (YYYY-MM-DD)"
    try:
        when = date.fromisoformat(text)
    except ValueError:
        return f"{name} is not a date"
    return f"{name} is in the future" if when > today else None


def _part_problem(
    group: str, name: str, kind: str, got: tuple[str, Any], today: date
) -> str | None:
    key, value = got
    if kind == "boolean":
        return None if key == "valueBoolean" and isinstance(value, bool) else f"{name}: a boolean"
    if kind == "code":
        ok = key == "valueCode" and value in ("active", "inactive")
        return None if ok else f"{name} must be active or inactive"
    if kind == "positiveInt":
        ok = key in ("valueInteger", "valuePositiveInt") and isinstance(value, int) and value > 0
        return None if ok else f"{name} must be a positive integer"
    if kind == "date":
        if key != "valueDate":
            return f"{name}: a date"
        return None if group == "includeDiaryEntries" else _date_problem(value, today, name)
    if key != "valuePeriod" or not isinstance(value, dict):
        return f"{name}: a period"
    for end in ("start", "end"):
        if end in value and (problem := _date_problem(value[end], today, f"{name}.{end}")):
            return problem
    if "start" in value and "end" in value and value["start"] > value["end"]:
        return f"{name}: start after end"
    return None


@lru_cache(maxsize=4096)
def check_parameters(body: bytes, today: date, full_record: bool = False) -> Refusal | Asked:
    """The operation's ``Parameters`` as a provider reads them: a function of the body,
    the day and the operation, so read once for each (the answer is shared by the
    requests sending the same body that day: read, never changed)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _refuse("INVALID_RESOURCE", "the body is not JSON")
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        return _refuse("INVALID_RESOURCE", "the body must be a Parameters resource")
    params = [p for p in doc.get("parameter") or [] if isinstance(p, dict)]
    nhs = [p for p in params if p.get("name") == "patientNHSNumber"]
    if len(nhs) != 1:
        return _refuse("INVALID_PARAMETER", "patientNHSNumber is required, once")
    ident = nhs[0].get("valueIdentifier") or {}
    if ident.get("system") != NHS_NUMBER_SYSTEM:
        return _refuse("INVALID_IDENTIFIER_SYSTEM", f"patientNHSNumber system: {NHS_NUMBER_SYSTEM}")
    if not isinstance(ident.get("value"), str) or not is_valid(ident["value"]):
        return _refuse("INVALID_NHS_NUMBER", "patientNHSNumber is not a valid NHS number")
    asked = Asked(ident["value"])
    known = {"includeFullRecord"} if full_record else set(GROUPS)
    for p in params:
        name = p.get("name")
        if name == "patientNHSNumber":
            continue
        if name not in known:
            asked.warnings.append(f"{name} is an unrecognised parameter")
            continue
        if name in asked.groups:
            return _refuse("INVALID_PARAMETER", f"{name} given twice")
        group = GROUPS.get(str(name))
        kinds = {pt.name: pt.kind for pt in group.parts} if group else {}
        kinds.update({"includeSensitiveInformation": "boolean"} if full_record else {})
        parts: dict[str, Any] = {}
        for part in p.get("part") or []:
            pname = part.get("name")
            if pname not in kinds:
                asked.warnings.append(f"{pname} is an unrecognised parameter")
                continue
            got = _value(part)
            if got is None:
                return _refuse("INVALID_PARAMETER", f"{pname} has no value")
            if problem := _part_problem(str(name), str(pname), kinds[pname], got, today):
                return _refuse("INVALID_PARAMETER", problem)
            parts[str(pname)] = got[1]
        if group is not None:
            for required in group.required:
                if required not in parts:
                    return _refuse("INVALID_PARAMETER", f"{name} needs {required}")
        asked.groups[str(name)] = parts
    if not asked.groups:
        return _refuse("INVALID_PARAMETER", "no recognised clinical area was asked for")
    consult = asked.groups.get("includeConsultations", {})
    if {"consultationSearchPeriod", "includeNumberOfMostRecent"} <= set(consult):
        return _refuse(
            "INVALID_RESOURCE",
            "consultationSearchPeriod and includeNumberOfMostRecent are mutually exclusive",
        )
    sent = {part for parts in asked.groups.values() for part in parts}
    if "includeConsultations" in asked.groups:
        bad = sent & (NOT_WITH_CONSULTATIONS - MULTI_AREA)
    elif "includeProblems" in asked.groups:
        bad = sent & (NOT_WITH_PROBLEMS - MULTI_AREA)
    else:
        bad = set()
    if bad:
        return _refuse("INVALID_PARAMETER", f"not permitted in this combination: {sorted(bad)}")
    return asked


def warning_outcome(warnings: list[str]) -> Json:
    """The in-Bundle warning a provider adds for parameters it does not act on."""
    return {
        "resourceType": "OperationOutcome",
        "id": "warnings",
        "issue": [
            {
                "severity": "warning",
                "code": "not-supported",
                "details": {
                    "coding": [
                        {
                            "system": SPINE_CODES,
                            "code": "NOT_IMPLEMENTED",
                            "display": "Not implemented",
                        }
                    ],
                    "text": w,
                },
                "diagnostics": w.split(" ", 1)[0],
            }
            for w in warnings
        ],
    }
