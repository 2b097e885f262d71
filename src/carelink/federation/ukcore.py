"""UK Core shape of what the gateway emits, applied in one place after the merge.

``UkCore.shape`` takes a federated record (merged Patient first, then the
sources' resources after adapter mapping, the Provenance and the per-source
OperationOutcome) and returns it as UK Core expects:

- every resource claims its type's UK Core profile in ``meta.profile``
  (resourceType -> profile URL comes from the profiles loaded from
  ``profiles/``, so a deployment that ships other profiles claims those),
  except one that lacks a top-level element its profile makes mandatory (a
  source's MedicationRequest without ``substitution``, as Synthea's are):
  the gateway does not invent clinical content, so it does not claim a
  profile the data cannot meet either (such a resource is still valid R4);
- the merged Patient's NHS number carries the UK Core NHS number verification
  status extension: ``01`` (number present and verified) when a source that
  holds the same number says it is verified (a GP system: registration traces
  the number on PDS), otherwise ``02`` (number present but not traced): the
  gateway only checks the check digit, which is not a trace. A status a
  source gave is never overwritten.

Source resources are copied before they change (adapters and the answer
cache share them). ``organisation`` answers which ODS code a source's
Provenance names (``Settings.source_ods``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from carelink.consent.guard import registered_practice
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM

Json = dict[str, Any]
VERIFICATION_STATUS = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
VERIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
VERIFIED = ("01", "Number present and verified")
NOT_TRACED = ("02", "Number present but not traced")
UKCORE_PATIENT = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"
REGISTERED_PRACTICE = "registered-practice"


def claim(resource: Json, profile: str | None) -> Json:
    """``resource`` (a copy) claiming ``profile`` in ``meta.profile``; unchanged without one."""
    if profile is None:
        return resource
    meta = dict(resource.get("meta") or {})
    claimed = list(meta.get("profile") or [])
    if profile in claimed:
        return resource
    meta["profile"] = [*claimed, profile]
    return {**resource, "meta": meta}


def verification_status(identifier: Json) -> str | None:
    """The NHS number verification status code an identifier carries, if any."""
    for ext in identifier.get("extension") or ():
        if ext.get("url") == VERIFICATION_STATUS:
            for coding in (ext.get("valueCodeableConcept") or {}).get("coding") or ():
                if coding.get("system") == VERIFICATION_SYSTEM:
                    return str(coding.get("code"))
    return None


def status_extension(code: str, display: str) -> Json:
    """The UK Core NHS number verification status extension."""
    return {
        "url": VERIFICATION_STATUS,
        "valueCodeableConcept": {
            "coding": [{"system": VERIFICATION_SYSTEM, "code": code, "display": display}]
        },
    }


def with_nhs_number_status(
    patient: Json, source_patients: Sequence[Json], profile: str | None = UKCORE_PATIENT
) -> Json:
    """The merged Patient (a copy) in UK Core shape: its NHS number with a verification
    status (``01`` when a source holding the same number verified it, else ``02``) and
    ``meta.profile``. This is the hook the merged-Patient builder calls."""
    identifiers = list(patient.get("identifier") or [])
    for i, ident in enumerate(identifiers):
        if ident.get("system") != NHS_NUMBER_SYSTEM or verification_status(ident) is not None:
            continue
        verified = any(
            verification_status(other) == VERIFIED[0]
            for p in source_patients
            for other in p.get("identifier") or ()
            if other.get("system") == NHS_NUMBER_SYSTEM and other.get("value") == ident.get("value")
        )
        ext = status_extension(*(VERIFIED if verified else NOT_TRACED))
        identifiers[i] = {**ident, "extension": [*(ident.get("extension") or []), ext]}
    out = {**patient, "identifier": identifiers} if identifiers else patient
    return claim(out, profile)


def _present(resource: Json, name: str) -> bool:
    if name.endswith("[x]"):
        stem = name[:-3]
        return any(k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper() for k in resource)
    return name in resource or f"_{name}" in resource


@dataclass(frozen=True)
class UkCore:
    """The profiles the gateway's output claims, and each source's organisation."""

    profiles: Mapping[str, str]  # resourceType -> profile URL
    ods: Mapping[str, str] = field(default_factory=dict)  # source -> ODS code
    #: resourceType -> top-level elements its profile requires (no claim without them)
    required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def organisation(self, source: str, patient: Json) -> str | None:
        """The ODS code naming ``source`` in Provenance (for ``registered-practice``, the
        patient's practice); None when the settings give none."""
        ods = self.ods.get(source)
        return registered_practice(patient) if ods == REGISTERED_PRACTICE else ods

    def claim(self, resource: Json) -> Json:
        """``resource`` claiming its type's profile, when it has what the profile requires."""
        rtype = str(resource.get("resourceType"))
        if not all(_present(resource, name) for name in self.required.get(rtype, ())):
            return resource
        return claim(resource, self.profiles.get(rtype))

    def shape(
        self, resources: Sequence[Json], provenance: Sequence[Json], outcome: Json
    ) -> tuple[list[Json], list[Json], Json]:
        """A federated record in UK Core shape: merged Patient (first) with its NHS number
        status, every resource claiming its profile."""
        return (
            self.shape_resources(resources),
            [self.claim(p) for p in provenance],
            self.claim(outcome),
        )

    def shape_resources(self, resources: Sequence[Json]) -> list[Json]:
        """The record's resources (merged Patient first) as ``shape`` makes them."""
        if not resources:
            return []
        first, rest = resources[0], resources[1:]
        if first.get("resourceType") == "Patient":
            sources = [r for r in rest if r.get("resourceType") == "Patient"]
            first = with_nhs_number_status(first, sources, self.profiles.get("Patient"))
        return [self.claim(first), *(self.claim(r) for r in rest)]
