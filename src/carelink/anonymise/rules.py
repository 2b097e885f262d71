"""De-identification rules in the Microsoft FHIR anonymizer's configuration format.

A configuration is JSON::

    {"fhirVersion": "R4",
     "fhirPathRules": [{"path": "nodesByType('HumanName')", "method": "redact"}, ...],
     "parameters": {"dateShiftKey": "...", "cryptoHashKey": "...", "encryptKey": "...",
                    "enablePartialDatesForRedact": true, ...}}

so existing configurations load unchanged. carelink adds, under
``parameters``, options that make the defaults stronger (see ``engine``):
``dateShiftScope: "person"`` (a keyed per-person shift), ``dateShiftRange``
(days), and ``pseudonymiseNhsNumber``. A malformed configuration is a
``ConfigError`` naming the file and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carelink.errors import ConfigError
from carelink.fhir.jsonio import read_config

METHODS = frozenset(
    {"keep", "redact", "dateShift", "cryptoHash", "encrypt", "substitute", "perturb", "generalize"}
)
PARAMETERS = frozenset(
    {
        "dateShiftKey",
        "dateShiftScope",
        "dateShiftRange",
        "dateShiftFixedOffsetInDays",
        "cryptoHashKey",
        "encryptKey",
        "enablePartialAgesForRedact",
        "enablePartialDatesForRedact",
        "enablePartialZipCodesForRedact",
        "restrictedZipCodeTabulationAreas",
        "pseudonymiseNhsNumber",
    }
)


@dataclass(frozen=True)
class Rule:
    """One ``fhirPathRules`` entry."""

    path: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A validated configuration."""

    rules: tuple[Rule, ...]
    parameters: dict[str, Any]
    processing_error: str = "raise"
    source: str = "<config>"


def parse(document: Any, source: str = "<config>") -> Config:
    """Validate a configuration document."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: a de-identification configuration is a JSON object")
    version = document.get("fhirVersion", "R4")
    if version not in ("R4", "r4"):
        raise ConfigError(f"{source}: fhirVersion {version!r}: only R4 is supported")
    raw_rules = document.get("fhirPathRules")
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: fhirPathRules must be a list")
    rules = []
    for i, r in enumerate(raw_rules):
        where = f"{source}: fhirPathRules[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("path"), str) or not r["path"]:
            raise ConfigError(f"{where}: needs a path")
        method = r.get("method")
        if method not in METHODS:
            raise ConfigError(f"{where}: method {method!r} is not one of {sorted(METHODS)}")
        options = {k: v for k, v in r.items() if k not in ("path", "method")}
        if method == "substitute" and "replaceWith" not in options:
            raise ConfigError(f"{where}: substitute needs replaceWith")
        if method == "perturb":
            if options.get("rangeType", "fixed") not in ("fixed", "proportional"):
                raise ConfigError(f"{where}: rangeType must be fixed or proportional")
            if not isinstance(options.get("span", 0), int | float) or options.get("span", 0) < 0:
                raise ConfigError(f"{where}: span must be a non-negative number")
        if method == "generalize":
            if not isinstance(options.get("cases"), dict):
                raise ConfigError(f"{where}: generalize needs cases (expression -> value)")
            if options.get("otherValues", "redact") not in ("redact", "keep"):
                raise ConfigError(f"{where}: otherValues must be redact or keep")
        rules.append(Rule(r["path"], method, options))
    params = document.get("parameters", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: parameters must be an object")
    unknown = set(params) - PARAMETERS
    if unknown:
        raise ConfigError(f"{source}: unknown parameter {sorted(unknown)[0]!r}")
    scope = params.get("dateShiftScope", "resource")
    if scope not in ("resource", "file", "folder", "person"):
        raise ConfigError(f"{source}: dateShiftScope must be resource, file, folder or person")
    used = {r.method for r in rules}
    if "encrypt" in used and len(str(params.get("encryptKey", "")).encode()) not in (16, 24, 32):
        raise ConfigError(f"{source}: encrypt needs an encryptKey of 16, 24 or 32 bytes")
    error_mode = document.get("processingError", "raise")
    if error_mode not in ("raise", "keep", "skip"):
        raise ConfigError(f"{source}: processingError must be raise, keep or skip")
    return Config(tuple(rules), dict(params), error_mode, source)


def load(path: Path) -> Config:
    """Read and validate a configuration file."""
    document, _ = read_config(path, "de-identification configuration")
    return parse(document, str(path))
