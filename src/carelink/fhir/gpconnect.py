"""GP Connect Access Record: Structured 1.6, the parts both ends need as data.

The consumer (``sources.gpconnect``) and the provider simulator
(``simulators.gp``) agree on these through this module only: the interaction
ids and Spine headers, the ``include*`` groups with their part parameters, the
STU3 section List codes, and the shape of a Spine ``OperationOutcome``. What
each value means is summarised in ``tests/data/gpconnect/FACTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

OPERATION = "$gpc.getstructuredrecord"
MIGRATE_OPERATION = "$gpc.migratestructuredrecord"
INTERACTION_ID = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
#: Foundations "read metadata": the provider's CapabilityStatement
METADATA_INTERACTION_ID = "urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1"
MIGRATE_INTERACTION_ID = (
    "urn:nhs:names:services:gpconnect:fhir:operation:gpc.migratestructuredrecord-1"
)
#: the four Spine Secure Proxy headers every request carries (names are case-insensitive)
SSP_TRACE_ID = "Ssp-TraceID"
SSP_FROM = "Ssp-From"
SSP_TO = "Ssp-To"
SSP_INTERACTION_ID = "Ssp-InteractionID"
FHIR_JSON_UTF8 = "application/fhir+json;charset=utf-8"

BUNDLE_PROFILE = "https://fhir.nhs.uk/STU3/StructureDefinition/GPConnect-StructuredRecord-Bundle-1"
OUTCOME_PROFILE = "https://fhir.nhs.uk/STU3/StructureDefinition/GPConnect-OperationOutcome-1"
SPINE_CODES = "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1"
#: the systems Spine codes arrive in (1.2.x examples name the ValueSet)
SPINE_CODE_SYSTEMS = (SPINE_CODES, "https://fhir.nhs.uk/STU3/ValueSet/Spine-ErrorOrWarningCode-1")
#: the SSP's own errors use HTTP status numbers as codes, in these systems
SSP_CODE_SYSTEMS = (
    "http://fhir.nhs.net/ValueSet/gpconnect-schedule-response-code-1-0",
    "https://fhir.nhs.uk/StructureDefinition/spine-operationoutcome-1",
)
LIST_WARNING_URL = (
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-ListWarningCode-1"
)

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
SDS_ROLE_PROFILE_SYSTEM = "https://fhir.nhs.uk/Id/sds-role-profile-id"

#: JWT rules: lifetime, reasons and the scope of a structured record read
JWT_LIFETIME = 300
REASON_DIRECT_CARE = "directcare"
REASON_MIGRATION = "migration"
SCOPE_READ = "patient/*.read"

#: SNOMED codes of the section Lists a structured record carries, and what each holds
SNOMED = "http://snomed.info/sct"
SECTION_LISTS: dict[str, str] = {
    "886921000000105": "Allergies and adverse reactions",
    "1103671000000101": "Ended allergies",
    "933361000000108": "Medications and medical devices",
    "1149501000000101": "List of consultations",
    "717711000000103": "Problems",
    "1102181000000102": "Immunisations",
    "826501000000100": "Miscellaneous record",
    "887191000000108": "Investigations and results",
    "886721000000107": "Referral details",
    "714311000000108": "Patient recall administration",
}
#: Lists that structure one consultation (kept as Lists: they are clinical structure)
CONSULTATION_LIST = "325851000000107"
TOPIC_LIST = "25851000000105"
CATEGORY_LIST = "24781000000107"
SECONDARY_LISTS = "https://fhir.nhs.uk/STU3/CodeSystem/GPConnect-SecondaryListValues-1"


@dataclass(frozen=True)
class Part:
    """One part parameter of an ``include*`` group: its name and value type."""

    name: str
    kind: str  # boolean | date | period | code | positiveInt


@dataclass(frozen=True)
class Group:
    """One clinical area's ``include*`` parameter: its parts, which are mandatory, the
    section List it answers with and the R4 types it brings (after conversion)."""

    name: str
    parts: tuple[Part, ...]
    required: tuple[str, ...]
    section: str
    r4_types: frozenset[str]


GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        Group(
            "includeAllergies",
            (Part("includeResolvedAllergies", "boolean"),),
            ("includeResolvedAllergies",),
            "886921000000105",
            frozenset({"AllergyIntolerance"}),
        ),
        Group(
            "includeMedication",
            (
                Part("includePrescriptionIssues", "boolean"),
                Part("medicationSearchFromDate", "date"),
            ),
            (),
            "933361000000108",
            frozenset({"MedicationStatement", "MedicationRequest", "Medication"}),
        ),
        Group(
            "includeConsultations",
            (
                Part("consultationSearchPeriod", "period"),
                Part("includeNumberOfMostRecent", "positiveInt"),
            ),
            (),
            "1149501000000101",
            frozenset({"Encounter", "List"}),
        ),
        Group(
            "includeProblems",
            (Part("filterStatus", "code"),),
            (),
            "717711000000103",
            frozenset({"Condition"}),
        ),
        Group(
            "includeImmunisations",
            (Part("includeNotGiven", "boolean"), Part("includeStatus", "boolean")),
            (),
            "1102181000000102",
            frozenset({"Immunization"}),
        ),
        Group(
            "includeUncategorisedData",
            (Part("uncategorisedDataSearchPeriod", "period"),),
            (),
            "826501000000100",
            frozenset({"Observation"}),
        ),
        Group(
            "includeInvestigations",
            (Part("investigationSearchPeriod", "period"),),
            (),
            "887191000000108",
            frozenset({"DiagnosticReport", "Observation", "Specimen", "ServiceRequest"}),
        ),
        Group(
            "includeReferrals",
            # the published referrals example spells it referralsSearchPeriod (FACTS.md)
            (Part("referralSearchPeriod", "period"), Part("referralsSearchPeriod", "period")),
            (),
            "886721000000107",
            frozenset({"ServiceRequest", "DocumentReference", "HealthcareService"}),
        ),
        Group(
            "includeDiaryEntries",
            (Part("diaryEntriesSearchDate", "date"),),
            (),
            "714311000000108",
            frozenset({"ServiceRequest"}),
        ),
    )
}
#: parts that may not be sent alongside includeConsultations (nor, but filterStatus,
#: alongside includeProblems) outside the predefined multi-area searches
NOT_WITH_CONSULTATIONS = frozenset(
    {
        "medicationSearchFromDate",
        "uncategorisedDataSearchPeriod",
        "filterStatus",
        "referralSearchPeriod",
        "diaryEntriesSearchDate",
        "includeNotGiven",
        "includeStatus",
    }
)
NOT_WITH_PROBLEMS = NOT_WITH_CONSULTATIONS - {"filterStatus"}


@dataclass(frozen=True)
class SpineError:
    """One GP Connect error: HTTP status, FHIR issue code, Spine code and display."""

    http: int
    issue_code: str
    code: str
    display: str


SPINE_ERRORS: dict[str, SpineError] = {
    e.code: e
    for e in (
        SpineError(400, "value", "INVALID_NHS_NUMBER", "Invalid NHS number"),
        SpineError(400, "value", "INVALID_IDENTIFIER_SYSTEM", "Invalid identifier system"),
        SpineError(400, "value", "INVALID_IDENTIFIER_VALUE", "Invalid identifier value"),
        SpineError(
            400, "business-rule", "INVALID_PATIENT_DEMOGRAPHICS", "Invalid patient demographics"
        ),
        SpineError(400, "invalid", "BAD_REQUEST", "Bad request"),
        SpineError(400, "invalid", "CONFLICTING_VALUES", "Conflicting values"),
        SpineError(403, "forbidden", "ACCESS DENIED", "Access denied"),
        SpineError(403, "forbidden", "ACCESS_DENIED", "Access denied"),
        SpineError(403, "forbidden", "NO_PATIENT_CONSENT", "No patient consent to share"),
        SpineError(403, "forbidden", "NO_RELATIONSHIP", "No legitimate relationship"),
        SpineError(403, "forbidden", "NO_ORGANISATION_CONSENT", "No organisation consent"),
        SpineError(404, "not-found", "PATIENT_NOT_FOUND", "Patient not found"),
        SpineError(404, "not-found", "NO_RECORD_FOUND", "No record found"),
        SpineError(404, "not-found", "ORGANISATION_NOT_FOUND", "Organisation not found"),
        SpineError(404, "not-found", "PRACTITIONER_NOT_FOUND", "Practitioner not found"),
        SpineError(422, "invalid", "INVALID_RESOURCE", "Invalid resource"),
        SpineError(422, "invalid", "INVALID_PARAMETER", "Invalid parameter"),
        SpineError(422, "invalid", "REFERENCE_NOT_FOUND", "Reference not found"),
        SpineError(500, "exception", "INTERNAL_SERVER_ERROR", "Internal server error"),
        SpineError(501, "not-supported", "NOT_IMPLEMENTED", "Not implemented"),
    )
}


def spine_outcome(code: str, diagnostics: str, severity: str = "error") -> Json:
    """A ``GPConnect-OperationOutcome-1`` carrying Spine code ``code``."""
    err = SPINE_ERRORS[code]
    return {
        "resourceType": "OperationOutcome",
        "meta": {"profile": [OUTCOME_PROFILE]},
        "issue": [
            {
                "severity": severity,
                "code": err.issue_code,
                "details": {
                    "coding": [{"system": SPINE_CODES, "code": err.code, "display": err.display}]
                },
                "diagnostics": diagnostics,
            }
        ],
    }


def ssp_outcome(status: int, display: str) -> Json:
    """An error the Spine Secure Proxy itself raises (HTTP status as the code)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "forbidden" if status == 403 else "exception",
                "details": {
                    "coding": [
                        {
                            "system": SSP_CODE_SYSTEMS[1],
                            "code": str(status),
                            "display": f"{status}: {display}",
                        }
                    ]
                },
            }
        ],
    }


def outcome_codes(outcome: Json) -> list[tuple[str, str, str]]:
    """``(severity, system, code)`` of each issue's coded details, in order."""
    out = []
    for i in outcome.get("issue") or []:
        if not isinstance(i, dict):
            continue
        codings = (i.get("details") or {}).get("coding") or [{}]
        c = codings[0] if isinstance(codings[0], dict) else {}
        out.append((str(i.get("severity", "")), str(c.get("system", "")), str(c.get("code", ""))))
    return out
