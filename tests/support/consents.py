"""FHIR Consent resources as the tests record them through the API."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from carelink.consent.directive import CONSENT_SCOPE, ODS_SYSTEM, PARTICIPATION


def privacy_consent(pid: str, provision: dict[str, Any], status: str = "active") -> dict[str, Any]:
    """A patient-privacy Consent for ``Patient/pid`` with ``provision``."""
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": "2026-11-23T09:00:00Z",
        "provision": provision,
    }


def custodian(ods: str) -> dict[str, Any]:
    """A Consent actor naming the organisation ``ods`` as custodian (role ``CST``): a
    provision with it is about that organisation's data."""
    return {
        "role": {"coding": [{"system": PARTICIPATION, "code": "CST"}]},
        "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}},
    }


def sent_consent(
    base: str, token: str, consent: dict[str, Any], cid: str | None = None
) -> httpx.Response:
    """``consent`` stored through the gateway at ``base`` (``POST``), or with ``cid``
    written over that Consent (``PUT``), by the holder of ``token``."""
    return httpx.request(
        "POST" if cid is None else "PUT",
        f"{base}/Consent" if cid is None else f"{base}/Consent/{cid}",
        content=orjson.dumps(consent if cid is None else {**consent, "id": cid}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=30,
    )
