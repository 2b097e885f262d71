"""OperationOutcome building."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
#: every OperationOutcome the gateway builds claims UK Core's profile
UKCORE_OPERATION_OUTCOME = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-OperationOutcome"


def issue(
    severity: str,
    code: str,
    diagnostics: str,
    *,
    expression: str | None = None,
    details: Json | None = None,
    extension: list[Json] | None = None,
) -> Json:
    """One ``OperationOutcome.issue``; ``severity`` and ``code`` are FHIR's value sets."""
    out: Json = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if details is not None:
        out["details"] = details
    if expression is not None:
        out["expression"] = [expression]
    if extension:
        out["extension"] = extension
    return out


def operation_outcome(issues: list[Json], id_: str | None = None) -> Json:
    """An ``OperationOutcome`` resource holding ``issues``."""
    out: Json = {
        "resourceType": "OperationOutcome",
        "meta": {"profile": [UKCORE_OPERATION_OUTCOME]},
        "issue": issues,
    }
    if id_ is not None:
        out["id"] = id_
    return out


def error_outcome(code: str, diagnostics: str, expression: str | None = None) -> Json:
    """An ``OperationOutcome`` with a single error issue."""
    return operation_outcome([issue("error", code, diagnostics, expression=expression)])
