"""The CapabilityStatement: exactly what the gateway supports, no more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carelink import __version__
from carelink.federation.patient_search import MODIFIERS
from carelink.federation.query import PARAMS
from carelink.fhir.shared_types import SHARED_TYPES

Json = dict[str, Any]

_TYPES = {"token": "token", "date": "date"}
_PAGING = (
    "Paging with _count and _offset over one stored answer: next/previous links carry "
    "_cursor (valid for the caller who searched, for a limited time; then 410 Gone). "
    "Token parameters take a,b (OR) and :not; every parameter takes :missing; other "
    "modifiers are a 400. Also by POST (.../_search with a form; $everything with "
    "Parameters). X-Carelink-Missing-Sources names sources missing from the answer; "
    "Prefer: partial=fail makes that a 503."
)


def _param(name: str, kind: str, doc: str | None = None) -> Json:
    out: Json = {"name": name, "type": kind}
    if doc:
        out["documentation"] = doc
    return out


#: what each Patient search parameter does (names and modifiers from the search code's table)
_PATIENT_DOCS = {
    "_id": ("token", "Gateway person id; comma-separated ids OR"),
    "identifier": (
        "token",
        "NHS number (https://fhir.nhs.uk/Id/nhs-number|N, check digit validated: 400 if bad) "
        "or a source's local id (https://carelink.example/Id/<source>|id); without a system, "
        "10 digits are an NHS number (400 if the check digit fails) or any source's local id; "
        "system|a,system|b OR",
    ),
    "family": ("string", "Starts with, ignoring case and accents; :exact: exactly as stored"),
    "given": ("string", "Starts with, ignoring case and accents; :exact: exactly as stored"),
    "birthdate": (
        "date",
        "YYYY, YYYY-MM or YYYY-MM-DD with eq ne lt gt le ge sa eb ap; repeat to AND, commas OR",
    ),
    "gender": ("token", "male | female | other | unknown"),
    "address-postalcode": ("string", "Postcode starts with, ignoring case and spaces"),
}
_PATIENT_SEARCH = (
    "Search needs identifier or _id, or at least family and birthdate (the minimum of the NHS "
    "PDS FHIR API for a demographic search); below it, or with an unsupported modifier, 400. "
    "Every match is returned (paged, exact total); people consent withholds from the caller "
    "are neither listed nor counted. "
)


def _patient_params() -> list[Json]:
    out = []
    for name, modifiers in MODIFIERS.items():
        kind, doc = _PATIENT_DOCS[name]
        named = ", ".join(f":{m}" for m in sorted(modifiers)) or "none"
        doc += f" (modifiers: {named}; any other is refused with 400)"
        out.append(_param(name, kind, doc))
    return out


def capability_statement(
    base: str, auth: str, token_url: str | None = None, profiles: Mapping[str, str] | None = None
) -> Json:
    """Built from the same tables the search code uses, so it cannot drift from them.

    ``profiles`` (resourceType -> profile URL, the ones the output claims) become each
    resource's ``supportedProfile``.
    """
    audit = (
        " Every access, allowed or refused, is recorded as an AuditEvent (IHE Basic Audit Log "
        "Patterns), hash-chained with signed checkpoints, before the answer is sent; if the "
        "trail cannot be written no patient data is served (503)."
    )
    if auth == "jwt":
        security: Json = {
            "cors": False,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "description": "Bearer JWTs from a trusted issuer (RS384/ES384/RS256/ES256/PS384; "
            "aud = this base URL; exp required, 30 s leeway); every endpoint but metadata and "
            "/.well-known/smart-configuration needs one. Scopes: SMART v2 "
            "context/Type.cruds[?param=value] (v1 .read/.write/.* mapped), enforced on every "
            "interaction including $everything, _include, _revinclude and counts; patient/ "
            "tokens stay in their own compartment. Claims: role (NHS national RBAC code), "
            "organisation (ODS code), purpose_of_use (v3 ActReason), patient for citizens. "
            "Backend services: client_credentials with a private_key_jwt assertion (RS384 or "
            "ES384) at the token endpoint." + audit,
        }
        if token_url:
            security["extension"] = [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_url}],
                }
            ]
    else:
        security = {
            "cors": False,
            "description": "Development mode: no token is checked; "
            "production mode refuses to start this way." + audit,
        }
    patient: Json = {
        "type": "Patient",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "conditionalRead": "full-support",
        "documentation": _PATIENT_SEARCH
        + "Read: ETag (a hash of the bytes served) and Last-Modified (meta.lastUpdated); "
        "If-None-Match and If-Modified-Since answer 304.",
        "searchParam": _patient_params(),
        "operation": [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "Federated from every source that knows the person; supports "
                "start, end, _since, _type, _count. " + _PAGING,
            },
            {
                "name": "ihe-pix",
                "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
                "documentation": "sourceIdentifier=system|value, optional targetSystem",
            },
        ],
    }
    resources = [patient]
    for rtype, params in PARAMS.items():
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchInclude": [],
                "searchRevInclude": ["Provenance:target"],
                "searchParam": [
                    _param(
                        "patient", "reference", "Required: searches are within one patient's record"
                    )
                ]
                + [_param(n, _TYPES[k]) for n, (k, _) in params.items()],
                "documentation": _PAGING,
            }
        )
    resources.append(
        {
            "type": "Provenance",
            "interaction": [{"code": "read"}],
            "documentation": "Where each part of a record came from: read by the id in "
            "$everything or _revinclude while the source's data is unchanged.",
        }
    )
    resources.extend(
        {
            "type": shared,
            "interaction": [{"code": "read"}],
            "documentation": "Not patient data: returned by $everything when the record "
            "refers to it, read from the source its id names; scopes apply, consent does not.",
        }
        for shared in sorted(SHARED_TYPES)
    )
    resources.append(
        {
            "type": "AuditEvent",
            "interaction": [{"code": "search-type"}],
            "searchParam": [
                _param(
                    "patient",
                    "reference",
                    "Privacy officers (R0001) and Caldicott Guardians (R5105), with purpose "
                    "HOPERAT, HCOMPL or HSYSADMIN, read any patient's trail (or all of it); a "
                    "citizen reads who accessed their own record. Newest first, exact total, "
                    "keyset next links.",
                ),
                _param("date", "date", "When recorded; eq ne lt gt le ge sa eb ap; repeat to AND"),
                _param(
                    "agent",
                    "reference",
                    "The user: issuer|subject (or agent:identifier=issuer|subject) that "
                    "user exactly; a bare subject, that subject at any issuer",
                ),
                _param("entity-type", "token", "1 events naming a person, 2 every event"),
                _param("outcome", "token", "0 success, 4 refused, 8 failed; commas OR"),
            ],
        }
    )
    consent: Json = {
        "type": "Consent",
        "interaction": [{"code": c} for c in ("read", "create", "update", "delete", "search-type")],
        "versioning": "versioned-update",
        "updateCreate": False,
        "searchParam": [_param("patient", "reference", "Required"), _param("status", "token")],
        "documentation": "Patients' choices (scope patient-privacy), in force on the next "
        "request in every gateway process. Writers: the policy's consentManagers roles, or "
        "a citizen for their own record. See consent/README.md for the provision elements "
        "enforced; any other is refused.",
    }
    resources.append(consent)
    patient["operation"].append(
        {
            "name": "break-glass",
            "definition": f"{base}/OperationDefinition/break-glass",
            "documentation": "POST Parameters(patient|identifier, purpose=ETREAT, reason): "
            "emergency access to one patient for the policy's minutes, by the policy's roles; "
            "audited (BTG) and put on the review list (Task).",
        }
    )
    resources.append(
        {
            "type": "Task",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [_param("status", "token")],
            "operation": [
                {
                    "name": "review",
                    "definition": f"{base}/OperationDefinition/review",
                    "documentation": "POST Parameters(outcome=appropriate|inappropriate, note)",
                }
            ],
            "documentation": "Break-glass reviews, for privacy officers (R0001) and Caldicott "
            "Guardians (R5105).",
        }
    )
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    patient["operation"].append({"name": "export", "definition": bulk + "patient-export"})
    resources.append(
        {
            "type": "Group",
            "operation": [{"name": "export", "definition": bulk + "group-export"}],
            "documentation": "Groups for $export: practice-<ODS code>, condition-<SNOMED CT>.",
        }
    )
    for r in resources:
        if profiles and r["type"] in profiles:
            r["supportedProfile"] = [profiles[r["type"]]]
    return {
        "resourceType": "CapabilityStatement",
        "id": "carelink",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "carelink", "version": __version__},
        "implementation": {"description": "carelink shared care record gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Unknown search parameters are ignored unless the request says "
                "Prefer: handling=strict. Prefer: wait=N shortens the time the "
                "gateway waits for sources (seconds). _summary=count and _elements "
                "are supported on every search.",
                "security": security,
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                        "documentation": "Backend services with system/ scopes and a "
                        "secondary-use purpose; the de-identification profile is the client's "
                        "registered agreement (profile=anonymised may narrow it), k, m.",
                    }
                ],
                "resource": resources,
                "searchParam": [
                    _param("_count", "number"),
                    _param("_elements", "string"),
                    _param("_summary", "token", "count only"),
                ],
            }
        ],
    }
