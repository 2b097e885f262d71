"""A GP Connect provider's (or the Spine Secure Proxy's) error, as the source's outcome.

The provider answers an error with an HTTP status and an ``OperationOutcome`` whose
``issue.details`` carries a Spine code (``PATIENT_NOT_FOUND`` ...); the SSP uses the
HTTP status number as its code. ``failure`` turns either into the ``SourceError`` that
says what happened, so the per-source issue of the gateway's answer reads, e.g.,
``source gp: refused (GP Connect NO_PATIENT_CONSENT (HTTP 403): the patient has
dissented from sharing their GP record)``. The provider's ``diagnostics`` are not
quoted: they may echo the NHS number.

- the patient or the practice said no (consent, access, relationship, no such
  patient, a number it will not accept): ``SourceRefused``, status ``refused``;
- the gateway's request was wrong (parameters, headers, JWT, ASIDs): ``SourceRefused``
  with status ``error`` (the source is up: the circuit stays closed);
- the provider failed or could not be reached (500, SSP 502): ``SourceUnavailable``.
"""

from __future__ import annotations

import orjson

from carelink.errors import SourceError, SourceRefused, SourceUnavailable
from carelink.fhir.gpconnect import SPINE_CODE_SYSTEMS, SSP_CODE_SYSTEMS, outcome_codes

#: Spine codes the patient's or practice's decision lies behind, and what each means
REFUSALS = {
    "INVALID_NHS_NUMBER": "the practice does not accept the NHS number (format or check digit)",
    "PATIENT_NOT_FOUND": "no such patient registered at the practice (or inactive, deceased, "
    "not verified or sensitive)",
    "NO_RECORD_FOUND": "the practice holds no record for the patient",
    "INVALID_PATIENT_DEMOGRAPHICS": "the patient's demographics do not trace",
    "NO_PATIENT_CONSENT": "the patient has dissented from sharing their GP record",
    "ACCESS DENIED": "GP Connect or its structured record is not enabled at the practice",
    "ACCESS_DENIED": "GP Connect or its structured record is not enabled at the practice",
    "NO_RELATIONSHIP": "no legitimate relationship with the patient",
    "NO_ORGANISATION_CONSENT": "the organisation has not consented to share",
}
#: Spine codes that say the gateway's request was wrong
REJECTIONS = {
    "INVALID_PARAMETER": "the practice rejected the request's parameters",
    "INVALID_RESOURCE": "the practice could not read the request's Parameters",
    "BAD_REQUEST": "the practice rejected the request (headers, JWT or body)",
    "CONFLICTING_VALUES": "the request's values conflict",
    "INVALID_IDENTIFIER_SYSTEM": "the request's identifier system is wrong",
    "INVALID_IDENTIFIER_VALUE": "the request's identifier value is wrong",
    "REFERENCE_NOT_FOUND": "a reference in the request does not resolve",
    "NOT_IMPLEMENTED": "the practice's system does not implement the operation",
    "ORGANISATION_NOT_FOUND": "the practice is not known",
    "PRACTITIONER_NOT_FOUND": "the practitioner is not known",
}
#: the SSP's own errors, by HTTP status
SSP = {
    400: ("error", "the proxy rejected the target URL (not the SDS endpoint)"),
    403: ("refused", "the proxy refused: ASID not authorised for the interaction"),
    405: ("error", "the proxy does not allow the method"),
    415: ("error", "the proxy does not accept the media type"),
    502: ("unavailable", "the proxy could not reach the practice"),
}


def failure(source: str, status: int, body: bytes) -> SourceError:
    """What an error answer (HTTP ``status``, ``body``) says happened at ``source``."""
    codes: list[tuple[str, str, str]] = []
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
        codes = outcome_codes(doc)
    spine = next((code for _, system, code in codes if system in SPINE_CODE_SYSTEMS), None)
    ssp = next((code for _, system, code in codes if system in SSP_CODE_SYSTEMS), None)
    if spine in REFUSALS:
        return SourceRefused(source, _say(spine, status, REFUSALS[spine]), spine)
    if spine in REJECTIONS:
        return SourceRefused(source, _say(spine, status, REJECTIONS[spine]), spine, "error")
    if spine == "INTERNAL_SERVER_ERROR":
        return SourceUnavailable(source, _say(spine, status, "the practice's system failed"))
    if ssp is not None and ssp.isdigit() and int(ssp) in SSP:
        kind, meaning = SSP[int(ssp)]
        reason = f"Spine Secure Proxy {ssp}: {meaning}"
        if kind == "unavailable":
            return SourceUnavailable(source, reason)
        return SourceRefused(source, reason, ssp, kind)
    if spine is not None:
        return SourceRefused(
            source, _say(spine, status, "unrecognised GP Connect error"), spine, "error"
        )
    return SourceUnavailable(source, f"HTTP {status}")


def _say(code: str, status: int, meaning: str) -> str:
    return f"GP Connect {code} (HTTP {status}): {meaning}"
