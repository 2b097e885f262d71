"""What an extract is asked for (``ExtractSpec``, its cohort and profile), whether the
policy lets it run (``permitted``), and what it produced (``Result``: counts, the
manifest's carelink part and the Bulk Data error file)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from carelink.anonymise.disclosure import (
    Report,
    small_numbers,
)
from carelink.consent import Policy
from carelink.errors import AccessDenied, ConfigError, InvalidRequest, NotFound
from carelink.federation.query import criteria
from carelink.fhir.jsonio import read_config

Json = dict[str, Any]
PROFILES = ("pseudonymised", "anonymised", "aggregate")
AGE_BAND_URL = "https://carelink.example/StructureDefinition/age-band"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED = "http://snomed.info/sct"


@dataclass(frozen=True)
class Cohort:
    """Who is in the extract: everyone, a GP practice's or a primary care network's
    registered patients, or people with a condition."""

    kind: str = "all"  # all | practice | pcn | condition
    value: str = ""
    #: a PCN's member practices (ODS codes), fixed when the export is asked for
    practices: tuple[str, ...] = ()

    @classmethod
    def from_group(cls, group_id: str, pcns: Mapping[str, Pcn] | None = None) -> Cohort:
        """``practice-<ODS>``, ``pcn-<ODS>`` (from the configured PCN list) or
        ``condition-<SNOMED code>``; ``NotFound`` for a group that does not exist."""
        kind, _, value = group_id.partition("-")
        if kind not in ("practice", "pcn", "condition") or not value:
            raise NotFound(
                f"Group/{group_id} is not known: groups are practice-<ODS code>, "
                "pcn-<ODS code> or condition-<SNOMED CT code>"
            )
        if kind == "pcn":
            if not pcns:
                raise NotFound(
                    f"Group/{group_id}: no primary care networks are configured (CARELINK_PCNS)"
                )
            pcn = pcns.get(value)
            if pcn is None:
                raise NotFound(f"Group/{group_id}: {value} is not a configured PCN")
            return cls(kind, value, pcn.practices)
        return cls(kind, value)

    def holds(self, practice: str | None) -> bool:
        """Is a person registered with ``practice`` in the cohort (before any condition)?"""
        if self.kind == "practice":
            return practice == self.value
        if self.kind == "pcn":
            return practice in self.practices
        return True


@dataclass(frozen=True)
class Pcn:
    """A primary care network: its ODS code, name and member practices."""

    code: str
    name: str
    practices: tuple[str, ...]


_ODS = re.compile(r"^[A-Z0-9]{3,10}$")


def load_pcns(path: Path) -> dict[str, Pcn]:
    """The PCN list: ``{"<PCN ODS code>": {"name": ..., "practices": ["<ODS>", ...]}}``;
    ``ConfigError`` naming the file and the entry that is wrong."""
    document, _ = read_config(path, "PCN list")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the PCN list is an object of PCN code -> entry")
    out = {}
    owner: dict[str, str] = {}
    for code, entry in document.items():
        where = f"{path}: PCN {code}"
        if not _ODS.match(code):
            raise ConfigError(f"{where}: not an ODS code")
        if not isinstance(entry, dict) or set(entry) - {"name", "practices"}:
            raise ConfigError(f"{where}: an entry has name and practices only")
        practices = entry.get("practices")
        if not isinstance(practices, list) or not practices:
            raise ConfigError(f"{where}: practices must be a non-empty list of ODS codes")
        for practice in practices:
            if not isinstance(practice, str) or not _ODS.match(practice):
                raise ConfigError(f"{where}: {practice!r} is not an ODS code")
            if practice in owner:
                raise ConfigError(f"{where}: {practice} already belongs to {owner[practice]}")
            owner[practice] = code
        out[code] = Pcn(code, str(entry.get("name", code)), tuple(practices))
    return out


@dataclass(frozen=True)
class ExtractSpec:
    """What an analyst asked for."""

    project: str
    profile: str = "anonymised"
    types: frozenset[str] | None = None
    since: datetime | None = None
    type_filters: dict[str, list[dict[str, list[str]]]] = field(default_factory=dict)
    cohort: Cohort = Cohort()
    k: int = 5
    max_suppressed: float = 0.1
    #: facts about a person's care the stated intruder knows (anonymised extracts)
    m: int = 2
    purpose: str = "HOPERAT"  # the v3 ActReason the extract serves (a secondary-use purpose)

    def check(self) -> None:
        """Refuse a request the pipeline cannot honour (``InvalidRequest``)."""
        if self.profile not in PROFILES:
            raise InvalidRequest(f"profile must be one of {', '.join(PROFILES)}", "profile")
        if not self.project:
            raise InvalidRequest("an extract needs a project", "project")
        if not 2 <= self.k <= 1000:
            raise InvalidRequest("k must be between 2 and 1000", "k")
        if not 1 <= self.m <= 3:
            raise InvalidRequest("m (facts the intruder knows) must be 1, 2 or 3", "m")
        for rtype, filters in self.type_filters.items():
            for f in filters:
                _, unknown = criteria(rtype, f)
                if unknown:
                    raise InvalidRequest(
                        f"_typeFilter {rtype}: unsupported parameter {unknown[0]}", "_typeFilter"
                    )


@dataclass
class Result:
    """What an extract produced."""

    counts: dict[str, int]
    people: int
    excluded: dict[str, int]
    risk: Report | None
    profile: str
    project: str
    withheld: dict[str, int] = field(default_factory=dict)
    consents_applied: bool = False
    #: source -> people whose data from it could not be read (after retries)
    incomplete: dict[str, int] = field(default_factory=dict)
    #: the same while finding a condition cohort's members
    incomplete_cohort: dict[str, int] = field(default_factory=dict)
    #: were the opt-outs counted among the cohort's own people (not for condition cohorts)
    opt_outs_counted: bool = True

    def errors(self) -> list[Json]:
        """One OperationOutcome per source that could not be read for someone (the Bulk
        Data error file): the extract is complete except for what these say."""
        out = [
            incomplete_outcome(
                f"source {source} could not be read for {small_numbers(n)} of the extract's "
                f"people after {ATTEMPTS} attempts: their records here lack its data"
            )
            for source, n in sorted(self.incomplete.items())
        ]
        out += [
            incomplete_outcome(
                f"source {source} could not be read for {small_numbers(n)} of the people "
                f"considered for the cohort after {ATTEMPTS} attempts: anyone whose condition "
                "is recorded only there is missing from it"
            )
            for source, n in sorted(self.incomplete_cohort.items())
        ]
        return out

    def manifest_extension(self) -> Json:
        """The carelink part of a manifest (small numbers suppressed)."""
        out: Json = {
            "profile": self.profile,
            "project": self.project,
            # released people are counted exactly: the files show them anyway
            "people": self.people,
            "optOutsExcluded": {k: small_numbers(v) for k, v in self.excluded.items()},
        }
        if self.profile == "aggregate":
            # nothing is released at record level: the people counted are a count too
            out["people"] = small_numbers(self.people)
            out["optOutsExcluded"] = (
                "not applied: aggregate tables under the small-number rule are anonymous, "
                "which the national data opt-out does not cover"
            )
        elif self.profile == "anonymised":
            out["optOutsExcluded"] = (
                "not applied: the extract passed the intruder test (anonymous in the ICO "
                "sense), which the national data opt-out does not cover"
            )
        elif not self.opt_outs_counted:
            out["optOutsExcluded"] = (
                "applied before the condition cohort was found and not counted: counting "
                "them would mean reading the records of people who opted out"
            )
        out["consent"] = {
            "sensitiveCategoriesWithheld": small_numbers(self.withheld.get("sensitive", 0)),
            "objections": (
                {"resourcesWithheld": small_numbers(self.withheld.get("objection", 0))}
                if self.consents_applied
                else f"not applied to {self.profile} extracts by the policy"
            ),
        }
        if self.incomplete:
            out["incompleteSources"] = {k: small_numbers(v) for k, v in self.incomplete.items()}
        if self.incomplete_cohort:
            out["incompleteCohortSources"] = {
                k: small_numbers(v) for k, v in self.incomplete_cohort.items()
            }
        if self.risk is not None:
            out["risk"] = self.risk.as_json()
        return out


Progress = Callable[[int, int], Awaitable[bool]]  # (done, total) -> keep going?


ATTEMPTS = 3  # reads of a person's record before a failing source is given up for them


def incomplete_outcome(text: str) -> Json:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "incomplete", "diagnostics": text}],
    }


def permitted(policy: Policy, spec: ExtractSpec) -> None:
    """Refuse (``AccessDenied``) an extract the consent policy does not allow: a purpose
    that is not secondary use, or a condition cohort in a category kept out of secondary
    use (membership alone would disclose it)."""
    allowed = policy.source.secondaryUsePurposes
    if spec.purpose not in allowed:
        raise AccessDenied(
            f"purpose of use {spec.purpose or '(none)'} is not a secondary-use purpose under "
            f"the consent policy ({', '.join(allowed)})"
        )
    if spec.cohort.kind == "condition":
        category = policy.by_code.get((SNOMED, spec.cohort.value))
        if category in policy.secondary_excludes:
            raise AccessDenied(
                f"Group/condition-{spec.cohort.value} is coded as {category}, a category the "
                "consent policy keeps out of secondary use"
            )


def type_filters(values: Iterable[str]) -> dict[str, list[dict[str, list[str]]]]:
    """Parse ``_typeFilter`` values (``Observation?category=laboratory``)."""
    from urllib.parse import parse_qs

    out: dict[str, list[dict[str, list[str]]]] = {}
    for value in values:
        for part in value.split(","):
            rtype, sep, query = part.partition("?")
            if not sep or not rtype:
                raise InvalidRequest(f"_typeFilter {part!r} is not Type?query", "_typeFilter")
            out.setdefault(rtype, []).append(parse_qs(query, keep_blank_values=True))
    return out
