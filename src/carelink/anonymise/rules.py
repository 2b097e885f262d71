"""De-identification rules in the Microsoft FHIR anonymizer's configuration format.

A configuration is JSON::

    {"fhirVersion": "R4",
     "fhirPathRules": [{"path": "nodesByType('HumanName')", "method": "redact"}, ...],
     "parameters": {"dateShiftKey": "...", "cryptoHashKey": "...", "encryptKey": "...",
                    "enablePartialDatesForRedact": true, ...}}

so existing configurations load unchanged. As in the Microsoft tool, method
names are case-insensitive (``dateshift`` is ``dateShift``), ``fhirVersion``
may be empty, and ``processingErrors`` is ``raise`` (the default) or ``skip``
(any casing; the older spelling ``processingError`` is read too). The tool
has no ``keep`` mode (returning the input unchanged on an error would ship
it un-de-identified): carelink refuses it.

carelink adds, under ``parameters``, options that make the defaults stronger
(see ``engine``): ``dateShiftScope: "person"`` (a keyed per-person shift),
``dateShiftRange`` and ``dateShiftMinimum`` (days), ``dateJitterDays``,
``freeText: "drop"`` with ``freeTextKeep``, and ``pseudonymiseNhsNumber``.
A malformed configuration is a ``ConfigError`` naming the file and the rule.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

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
        "dateShiftMinimum",
        "dateJitterDays",
        "freeText",
        "freeTextKeep",
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
    version = document.get("fhirVersion") or "R4"  # empty: this engine's version, as the tool
    if not isinstance(version, str) or version.upper() != "R4":
        raise ConfigError(f"{source}: fhirVersion {version!r}: only R4 is supported")
    raw_rules = document.get("fhirPathRules")
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: fhirPathRules must be a list")
    rules = []
    for i, r in enumerate(raw_rules):
        where = f"{source}: fhirPathRules[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("path"), str) or not r["path"]:
            raise ConfigError(f"{where}: needs a path")
        method = _METHOD_NAMES.get(str(r.get("method")).lower())
        if method is None:
            raise ConfigError(
                f"{where}: method {r.get('method')!r} is not one of {sorted(METHODS)}"
            )
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
    _check_shift(params, scope, source)
    if params.get("freeText", "keep") not in ("keep", "drop"):
        raise ConfigError(f"{source}: freeText must be keep or drop")
    keep = params.get("freeTextKeep", [])
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise ConfigError(f"{source}: freeTextKeep must be a list of element paths")
    used = {r.method for r in rules}
    if "encrypt" in used and len(str(params.get("encryptKey", "")).encode()) not in (16, 24, 32):
        raise ConfigError(f"{source}: encrypt needs an encryptKey of 16, 24 or 32 bytes")
    return Config(tuple(rules), dict(params), _error_mode(document, source), source)


_METHOD_NAMES = {m.lower(): m for m in METHODS}


def _error_mode(document: dict[str, Any], source: str) -> str:
    modes = {
        key: str(document[key]).lower()
        for key in ("processingErrors", "processingError")
        if document.get(key) is not None
    }
    if len(set(modes.values())) > 1:
        raise ConfigError(
            f"{source}: processingErrors and processingError disagree; keep processingErrors"
        )
    mode = next(iter(modes.values()), "raise")
    if mode == "keep":
        raise ConfigError(
            f"{source}: processingErrors keep is not supported (the Microsoft tool has no such"
            " mode, and it would ship the resource un-de-identified); use raise or skip"
        )
    if mode not in ("raise", "skip"):
        raise ConfigError(f"{source}: processingErrors must be raise or skip")
    return mode


def _check_shift(params: dict[str, Any], scope: Any, source: str) -> None:
    """``dateShiftRange``, ``dateShiftMinimum`` and ``dateJitterDays``: whole days,
    ``1 <= minimum <= range``; minimum and jitter only for the per-person shift."""
    for name in ("dateShiftRange", "dateShiftMinimum", "dateJitterDays"):
        value = params.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{source}: {name} must be a whole number of days")
    size, minimum = params.get("dateShiftRange", 50), params.get("dateShiftMinimum", 1)
    if not 1 <= minimum <= size:
        raise ConfigError(f"{source}: dateShiftMinimum must be between 1 and dateShiftRange")
    if params.get("dateJitterDays", 0) < 0:
        raise ConfigError(f"{source}: dateJitterDays must not be negative")
    for name in ("dateShiftMinimum", "dateJitterDays"):
        if name in params and scope != "person":
            raise ConfigError(f"{source}: {name} needs dateShiftScope person")


def load(path: Path) -> Config:
    """Read and validate a configuration file (a UTF-8 byte-order mark, which the
    Microsoft tool's own samples carry, is allowed)."""
    what = "de-identification configuration"
    try:
        document, _ = read_config(path, what)
    except ConfigError:
        raw = path.read_bytes() if path.is_file() else b""
        if not raw.startswith(codecs.BOM_UTF8):
            raise
        try:
            document = orjson.loads(raw[len(codecs.BOM_UTF8) :])
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: {what} is not JSON ({exc.msg})") from exc
    return parse(document, str(path))
