"""Checking a Consent sent to the API before it is stored.

Structure is checked with the fhir.resources model (at the edge, where its
cost does not matter); then the rules the engine relies on: scope
``patient-privacy``, a known patient, a typed provision at every level,
actors named by ODS code or NHS role code, only provision elements the
engine enforces, and dates it can read. Every refusal names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from carelink.consent.directive import (
    CONSENT_SCOPE,
    ODS_SYSTEM,
    PROVISION_KEYS,
    ROLE_SYSTEM,
    instant,
)
from carelink.errors import UnprocessableResource

Json = dict[str, Any]
STATUSES = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})


def validate(consent: Any, known_patient: Callable[[str], bool]) -> str:
    """Raise ``UnprocessableResource`` naming the problem; the patient id when all is well."""
    if not isinstance(consent, dict) or consent.get("resourceType") != "Consent":
        raise UnprocessableResource("the body must be a Consent resource", "resourceType")
    try:
        Consent.model_validate(consent)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "Consent." + ".".join(str(p) for p in first["loc"] if p != "__root__")
        raise UnprocessableResource(f"{field}: {first['msg']}", field) from None
    if consent.get("status") not in STATUSES:
        raise UnprocessableResource("Consent.status is not a consent-state-codes code", "status")
    scope = {(c.get("system"), c.get("code")) for c in consent["scope"].get("coding", ())}
    if (CONSENT_SCOPE, "patient-privacy") not in scope:
        raise UnprocessableResource(
            f"Consent.scope must be {CONSENT_SCOPE}|patient-privacy (the only scope enforced here)",
            "scope",
        )
    ref = str(consent.get("patient", {}).get("reference", ""))
    if not ref.startswith("Patient/") or not known_patient(ref.removeprefix("Patient/")):
        raise UnprocessableResource(
            "Consent.patient must reference a Patient known to the gateway", "patient"
        )
    if "provision" not in consent:
        raise UnprocessableResource("Consent.provision is required: it says what is decided")
    _provision(consent["provision"], "Consent.provision")
    return ref.removeprefix("Patient/")


def _provision(p: Json, where: str) -> None:
    extra = set(p) - PROVISION_KEYS
    if extra:
        raise UnprocessableResource(
            f"{where}.{sorted(extra)[0]} is not enforced by this gateway, so it is refused",
            f"{where}.{sorted(extra)[0]}",
        )
    if p.get("type") not in ("permit", "deny"):
        raise UnprocessableResource(f"{where}.type must be permit or deny", f"{where}.type")
    for key in ("period", "dataPeriod"):
        for end in ("start", "end"):
            value = (p.get(key) or {}).get(end)
            if value is not None:
                try:
                    instant(value)
                except ValueError:
                    raise UnprocessableResource(
                        f"{where}.{key}.{end} is not a FHIR dateTime", f"{where}.{key}"
                    ) from None
    for i, a in enumerate(p.get("actor", ())):
        ident = a.get("reference", {}).get("identifier", {})
        if ident.get("system") not in (ODS_SYSTEM, ROLE_SYSTEM) or not ident.get("value"):
            raise UnprocessableResource(
                f"{where}.actor[{i}].reference.identifier must be an ODS code ({ODS_SYSTEM}) "
                f"or an NHS role code ({ROLE_SYSTEM})",
                f"{where}.actor[{i}]",
            )
    for i, d in enumerate(p.get("data", ())):
        if "/" not in str(d.get("reference", {}).get("reference", "")):
            raise UnprocessableResource(
                f"{where}.data[{i}].reference must be a literal Type/id reference",
                f"{where}.data[{i}]",
            )
    for i, child in enumerate(p.get("provision", ())):
        _provision(child, f"{where}.provision[{i}]")
