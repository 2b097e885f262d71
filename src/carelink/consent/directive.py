"""A patient's FHIR R4 ``Consent`` as a rule tree the decision engine walks.

Supported provision elements (anything else in a provision is refused when
the Consent is written, so nothing is silently ignored):

- ``type`` permit | deny, on every provision (nested ones are exceptions to
  the one around them: the most specific applicable provision decides);
- ``period``: when the provision is in force (an ended period = expired);
- ``actor``: role ``IRCP`` (or any role but ``CST``) names a recipient by
  ODS code (organisation) or NHS RBAC role code; role ``CST`` (custodian)
  names an organisation whose *data* the provision is about;
- ``action``: access/use/disclose (other actions are not what the gateway does);
- ``securityLabel``, ``purpose``, ``class`` (resource type), ``code``,
  ``dataPeriod``, ``data`` (a resource by reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ROLE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
GATEWAY_ACTIONS = frozenset({"access", "use", "disclose"})
PROVISION_KEYS = frozenset(
    {
        "id",
        "type",
        "period",
        "actor",
        "action",
        "securityLabel",
        "purpose",
        "class",
        "code",
        "dataPeriod",
        "data",
        "provision",
    }
)


@dataclass(frozen=True)
class Period:
    """A closed-open interval of instants; ``None`` ends are open."""

    start: datetime | None
    end: datetime | None

    def holds(self, t: datetime) -> bool:
        """Is ``t`` inside?"""
        return (self.start is None or self.start <= t) and (self.end is None or t <= self.end)


@dataclass(frozen=True)
class ActorRule:
    """Whom a provision is about: a recipient, or (``custodian``) whose data."""

    custodian: bool
    system: str
    value: str


@dataclass(frozen=True)
class Provision:
    """One provision, its constraints and its exceptions."""

    type: str
    period: Period | None
    actors: tuple[ActorRule, ...]
    actions: frozenset[str]
    labels: frozenset[str]
    purposes: frozenset[str]
    classes: frozenset[str]
    codes: frozenset[tuple[str, str]]
    data_period: Period | None
    data: frozenset[str]
    children: tuple[Provision, ...]


@dataclass(frozen=True)
class Directive:
    """One stored Consent, as the engine uses it."""

    id: str
    status: str
    provision: Provision


def instant(value: str, end: bool = False) -> datetime:
    """A FHIR date or dateTime as an aware instant (a bare date covers the whole day)."""
    if len(value) == 4:
        value += "-12-31" if end else "-01-01"
    elif len(value) == 7:
        value += "-28" if end else "-01"  # month precision: conservative end
    if len(value) == 10:
        value += "T23:59:59+00:00" if end else "T00:00:00+00:00"
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _period(p: Json | None) -> Period | None:
    if not p:
        return None
    return Period(
        instant(p["start"]) if p.get("start") else None,
        instant(p["end"], end=True) if p.get("end") else None,
    )


def _codes(concepts: list[Json]) -> list[Json]:
    return [c for cc in concepts for c in cc.get("coding", ())]


def provision(p: Json) -> Provision:
    """Parse a provision (already validated by ``validate``)."""
    actors = []
    for a in p.get("actor", ()):
        roles = {c.get("code") for c in a.get("role", {}).get("coding", ())}
        ident = a.get("reference", {}).get("identifier", {})
        actors.append(ActorRule("CST" in roles, ident.get("system", ""), ident.get("value", "")))
    return Provision(
        type=p["type"],
        period=_period(p.get("period")),
        actors=tuple(actors),
        actions=frozenset(str(c.get("code")) for c in _codes(p.get("action", []))),
        labels=frozenset(str(c.get("code")) for c in p.get("securityLabel", ())),
        purposes=frozenset(str(c.get("code")) for c in p.get("purpose", ())),
        classes=frozenset(str(c.get("code")) for c in p.get("class", ())),
        codes=frozenset(
            (str(c.get("system", "")), str(c.get("code"))) for c in _codes(p.get("code", []))
        ),
        data_period=_period(p.get("dataPeriod")),
        data=frozenset(str(d["reference"]["reference"]) for d in p.get("data", ())),
        children=tuple(provision(c) for c in p.get("provision", ())),
    )


def directive(consent: Json) -> Directive:
    """A stored Consent as a ``Directive``."""
    return Directive(str(consent["id"]), str(consent["status"]), provision(consent["provision"]))
