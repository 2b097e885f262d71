"""The ICS sharing policy, loaded from a versioned JSON file and validated.

The file (``consent/policy.json`` in the repository; any path through
``CARELINK_CONSENT_POLICY``) says:

- ``model``: ``implied-consent-with-objection`` (the only model supported:
  direct care is permitted unless the patient objected);
- ``directCarePurposes``: the v3 ActReason codes the live API serves; any
  other purpose is refused (secondary use goes through extracts);
- ``organisations``: each source's custodian ODS code (the GP source's is
  ``registered-practice``: the patient's own practice);
- ``categories``: sensitive categories, how they are recognised (security
  labels the sources set, or clinical codes), which roles may see them
  without explicit consent, and whether the citizen may see them;
- ``breakGlass``: who may override, for how long, who reviews;
- ``consentManagers``: roles that may record patients' choices;
- ``custodianAccess``: sources whose organisation keeps seeing its own data
  through the gateway whatever the patient chose (the registered practice);
- ``secondaryUsePurposes``: the purposes an extract (``$export``) may serve;
- ``secondaryUseExcludes``: sensitive categories never extracted, whatever
  the profile (the legally restricted ones: sexual health, reproductive
  health, gender identity, safeguarding);
- ``consentAccess``: who may read, change and consult whose Consents, and
  which changes are reviewed (see ``ConsentAccess``);
- ``systemScopesOnLiveApi``: may backend-services (``system/``) tokens use the
  live clinical API (default false: they serve ``$export`` only);
- ``secondaryUseObjections``: which extracts honour the patient's Consents
  (``pseudonymised``, the default: wherever the opt-outs apply; ``all``;
  ``none``). In an extract a Consent is read for the extract's purpose: a
  deny that names no purpose, or names that one, keeps its data out.

Anything the file does not permit is denied. A malformed file stops start-up
with ``ConfigError`` naming the file, the field and (where it can be found)
the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from carelink.errors import ConfigError
from carelink.fhir.jsonio import read_config

ROLE = re.compile(r"^R\d{4}$")
ODS = re.compile(r"^[A-Z0-9]{3,10}$")
ACT_REASON = re.compile(r"^[A-Z]{3,10}$")
REGISTERED_PRACTICE = "registered-practice"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    """A code in a code system."""

    system: str = Field(min_length=1)
    code: str = Field(min_length=1)


class Organisation(_Strict):
    """The organisation responsible for a source's data."""

    ods: str
    name: str

    @field_validator("ods")
    @classmethod
    def _ods(cls, v: str) -> str:
        if v != REGISTERED_PRACTICE and not ODS.match(v):
            raise ValueError(f"{v!r} is not an ODS code (or 'registered-practice')")
        return v


def _roles(v: list[str]) -> list[str]:
    for r in v:
        if not ROLE.match(r):
            raise ValueError(
                f"{r!r} is not an NHS national RBAC role code (R followed by 4 digits)"
            )
    return v


class Category(_Strict):
    """A sensitive category: how it is recognised and who may see it by default."""

    code: str = Field(pattern=r"^[A-Z]{2,12}$")
    display: str
    labels: list[Coding] = Field(min_length=1)
    codes: list[Coding] = []
    roles: list[str]
    citizenMayView: bool

    _check_roles = field_validator("roles")(classmethod(lambda cls, v: _roles(v)))


class BreakGlass(_Strict):
    """Emergency override: who, why, for how long, reviewed by whom."""

    roles: list[str]
    purpose: str = Field(pattern=ACT_REASON.pattern)
    minutes: int = Field(gt=0, le=24 * 60)
    overrides: list[Literal["objection", "sensitive"]]
    reviewers: list[str] = Field(min_length=1)
    reviewWithinDays: int = Field(gt=0)

    _check_roles = field_validator("roles", "reviewers")(classmethod(lambda cls, v: _roles(v)))


class ConsentAccess(_Strict):
    """Who may read, change and ask the decision service about a patient's Consents.

    The patient (a patient-context token, also those acting for them) always
    may; so may ``privacyOfficers`` for anyone, and ``registeredPracticeRoles``
    at the patient's registered practice (``Patient.generalPractitioner`` ODS =
    the token's organisation) for that practice's patients. Changing also needs
    the role in ``consentManagers``. Anyone else gets the answer an unknown
    patient gets. Changes by anyone but the patient of the kinds in
    ``reviewChanges`` raise a review Task for the break-glass reviewers.
    """

    privacyOfficers: list[str] = []
    registeredPracticeRoles: list[str] = []
    reviewChanges: list[Literal["withdraw-objection", "sensitive-permit"]] = [
        "withdraw-objection",
        "sensitive-permit",
    ]

    _check_roles = field_validator("privacyOfficers", "registeredPracticeRoles")(
        classmethod(lambda cls, v: _roles(v))
    )


class PolicyFile(_Strict):
    """The whole file."""

    version: str = Field(min_length=1)
    name: str
    model: Literal["implied-consent-with-objection"]
    directCarePurposes: list[str] = Field(min_length=1)
    organisations: dict[str, Organisation]
    categories: list[Category]
    breakGlass: BreakGlass
    consentManagers: list[str]
    citizensManageOwn: bool
    custodianAccess: list[str]
    secondaryUsePurposes: list[str] = Field(min_length=1)
    secondaryUseExcludes: list[str] = []
    secondaryUseObjections: Literal["pseudonymised", "all", "none"] = "pseudonymised"
    consentAccess: ConsentAccess = ConsentAccess()
    systemScopesOnLiveApi: bool = False

    @field_validator("directCarePurposes", "secondaryUsePurposes")
    @classmethod
    def _purposes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not ACT_REASON.match(p):
                raise ValueError(f"{p!r} is not a v3 ActReason code")
        return v

    _check_managers = field_validator("consentManagers")(classmethod(lambda cls, v: _roles(v)))

    @field_validator("custodianAccess")
    @classmethod
    def _custodian_access(cls, v: list[str], info: Any) -> list[str]:
        known = info.data.get("organisations", {})
        for name in v:
            if name not in known:
                raise ValueError(f"{name!r} is not one of the organisations' sources")
        return v

    @field_validator("secondaryUseExcludes")
    @classmethod
    def _excludes_known(cls, v: list[str], info: Any) -> list[str]:
        known = {c.code for c in info.data.get("categories", ())}
        for code in v:
            if code not in known:
                raise ValueError(f"{code!r} is not one of the categories' codes")
        return v


@dataclass(frozen=True)
class Policy:
    """The validated policy, indexed for the request path."""

    source: PolicyFile
    path: str
    #: (label system, label code) -> category code
    by_label: dict[tuple[str, str], str]
    #: (code system, code) -> category code
    by_code: dict[tuple[str, str], str]
    categories: dict[str, Category]

    @cached_property
    def secondary_excludes(self) -> frozenset[str]:
        """Category codes never extracted."""
        return frozenset(self.source.secondaryUseExcludes)

    @property
    def version(self) -> str:
        """The policy's version, recorded with every decision."""
        return self.source.version

    def custodian(self, source: str) -> str | None:
        """The ODS code responsible for a source's data (``registered-practice`` for GP)."""
        org = self.source.organisations.get(source)
        return org.ods if org else None

    def categories_of(self, resource: dict[str, Any]) -> frozenset[str]:
        """The sensitive categories a resource falls in (by label or by code): none for
        a resource ``unmarked`` (under every policy)."""
        if unmarked(resource):
            return _NONE
        found: set[str] = set()
        for label in resource.get("meta", {}).get("security", ()):
            cat = self.by_label.get((label.get("system", ""), label.get("code", "")))
            if cat:
                found.add(cat)
        if self.by_code:
            for key in _CODED:
                coded = resource.get(key)
                if not coded:  # most resources carry none of them (a Patient, every time)
                    continue
                for c in coded.get("coding", ()):
                    cat = self.by_code.get((c.get("system", ""), c.get("code", "")))
                    if cat:
                        found.add(cat)
        return frozenset(found) if found else _NONE


#: the elements whose codings ``categories_of`` reads
_CODED = ("code", "vaccineCode", "medicationCodeableConcept")
#: no category
_NONE: frozenset[str] = frozenset()
#: a ``meta`` without ``security``
_ABSENT = object()


def unmarked(resource: dict[str, Any]) -> bool:
    """Does ``resource`` carry nothing a policy recognises a sensitive category by: no
    ``meta.security`` at all, and none of the coded elements ``categories_of`` reads
    (or only empty ones)? Then ``categories_of`` finds no category in it under any
    policy (it is ``categories_of``'s first step), so whether a stored resource is
    unmarked can be decided once, when it is written, whatever policy later reads it
    (the patient index's ``persons.plain``). False decides nothing."""
    if resource.get("meta", {}).get("security", _ABSENT) is not _ABSENT:
        return False
    # a loop, not ``all`` over a generator (a generator made a call): asked of every resource
    for key in _CODED:  # noqa: SIM110
        if resource.get(key):
            return False
    return True


def from_document(document: Any, path: str = "<policy>", text: str = "") -> Policy:
    """Validate a parsed policy document; ``ConfigError`` names the field that is wrong."""
    try:
        source = PolicyFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        line = _line_of(text, first["loc"])
        where = f"{path}:{line}" if line else path
        raise ConfigError(f"{where}: consent policy field {field}: {first['msg']}") from None
    codes = [c.code for c in source.categories]
    if len(set(codes)) != len(codes):
        raise ConfigError(f"{path}: consent policy field categories: a code appears twice")
    by_label = {(lab.system, lab.code): c.code for c in source.categories for lab in c.labels}
    by_code = {(k.system, k.code): c.code for c in source.categories for k in c.codes}
    return Policy(source, path, by_label, by_code, {c.code: c for c in source.categories})


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file."""
    document, text = read_config(path, "consent policy")
    return from_document(document, str(path), text)


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the last named key on the path (best effort: JSON keeps no positions)."""
    pos, found = 0, None
    for part in loc:
        if isinstance(part, int):
            continue
        at = text.find(f'"{part}"', pos)
        if at < 0:
            break
        pos, found = at, at
    return text.count("\n", 0, found) + 1 if found is not None else None
