"""The consent decision: may this actor see this resource of this patient, and why.

Order of reasoning, first that applies wins:

1. a citizen reading their own record sees it, except categories the
   policy keeps from citizens (safeguarding, say);
2. the organisation responsible for the data (its custodian) sees its own
   data whatever the patient objected to, for the sources the policy lists
   in ``custodianAccess`` (the registered GP practice in the shipped policy);
3. a purpose the policy does not list for direct care is refused;
4. the patient's active, in-force Consents: a deny from any of them
   denies (deny overrides); a permit permits, but unlocks a sensitive
   category only when a provision on the way names that category's label;
5. the policy default: implied consent for direct care, except sensitive
   categories for roles the policy does not list;

and an active break-glass grant turns a denial on the grounds the policy
lets it override (objection, sensitive) into a permit marked as such.
Works on plain dicts: nothing here parses with fhir.resources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carelink.consent.directive import (
    GATEWAY_ACTIONS,
    ODS_SYSTEM,
    ROLE_SYSTEM,
    Directive,
    Provision,
    instant,
)
from carelink.consent.policy import REGISTERED_PRACTICE, Policy

Json = dict[str, Any]

PERMIT, DENY = "permit", "deny"
DATE_KEYS = (
    "effectiveDateTime",
    "onsetDateTime",
    "authoredOn",
    "recordedDate",
    "occurrenceDateTime",
    "issued",
    "date",
)


@dataclass(frozen=True)
class Actor:
    """Who asks, as consent sees them."""

    subject: str
    role: str | None
    organisation: str | None
    purpose: str | None
    patient: str | None = None  # set for a citizen reading their own record
    identity: str = ""  # the full identity break-glass grants are bound to (never the subject)


@dataclass(frozen=True)
class Decision:
    """The answer for one resource, with its grounds."""

    permit: bool
    basis: str  # citizen | custodian | purpose | consent | policy | sensitive | break-glass
    reason: str
    consents: tuple[str, ...] = ()
    categories: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Situation:
    """What is true of one request for one patient."""

    actor: Actor
    patient_id: str
    directives: Sequence[Directive]
    now: datetime
    #: meta.source URI or local-identifier system -> source name
    sources: Mapping[str, str] = field(default_factory=dict)
    registered_practice: str | None = None
    break_glass: bool = False


IMPLIED = Decision(True, "policy", "implied consent for direct care")


class Engine:
    """Decisions under one policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._direct_care = frozenset(policy.source.directCarePurposes)

    def shown_as_is(self, actor: Actor, resource: Json) -> bool:
        """Is ``resource`` of a patient who holds no Consents permitted to ``actor`` as it
        is (``decide`` permits it with no category and ``label`` adds nothing)? True when
        the policy recognises no sensitive category in it and the actor is the patient or
        serves a direct-care purpose: ``_decide`` then permits it as the citizen's own
        record, the custodian's own data or by implied consent, whichever applies, with
        no category. False decides nothing: ``decide`` does. A break-glass situation is
        not this one (it only turns denials)."""
        return self.shows_unmarked(actor) and not self.policy.categories_of(resource)

    def shows_unmarked(self, actor: Actor) -> bool:
        """Is every resource ``policy.unmarked`` of a patient who holds no Consents shown
        to ``actor`` as it is (``shown_as_is``, for any such resource: none has a
        category under any policy)? True when the actor is the patient or serves a
        direct-care purpose."""
        return actor.patient is not None or actor.purpose in self._direct_care

    def decide(self, s: Situation, resource: Json) -> Decision:
        """The decision for one resource."""
        decision = self._decide(s, resource)
        if not decision.permit and s.break_glass and self._overridable(decision):
            return Decision(
                True, "break-glass", "emergency override by break-glass", (), decision.categories
            )
        return decision

    def for_secondary_use(self, s: Situation, r: Json, objections: bool) -> Decision:
        """One resource in an extract, for ``s.actor.purpose`` (a secondary-use purpose).

        Categories in ``secondaryUseExcludes`` are never extracted. With
        ``objections``, the patient's active Consents are read for the
        extract's purpose: a deny that names no purpose or names this one (and
        whose other conditions hold) keeps the resource out; a permit cannot
        bring back an excluded category.
        """
        cats = self.policy.categories_of(r)
        kept_out = sorted(cats & self.policy.secondary_excludes)
        if kept_out:
            return Decision(
                False, "sensitive", f"{kept_out[0]} is kept out of secondary use", (), cats
            )
        if objections and s.directives:
            verdict, _, ids = self._consents(s, r, cats)
            if verdict == DENY:
                return Decision(False, "objection", "the patient's consent denies it", ids, cats)
        return Decision(True, "policy", "secondary use under the policy", (), cats)

    def _own(self, s: Situation, r: Json) -> bool:
        """Is the caller's organisation responsible for ``r`` (a ``custodianAccess`` source)?"""
        org = s.actor.organisation
        if not org:
            return False
        src = r.get("meta", {}).get("source")
        if src is not None and src in s.sources:
            ods = self.policy.custodian(s.sources[src])
            if s.sources[src] not in self.policy.source.custodianAccess:
                return False
            return org == (s.registered_practice if ods == REGISTERED_PRACTICE else ods)
        return org in self.custodians(s, r, own_access=True)

    def custodians(self, s: Situation, resource: Json, own_access: bool = False) -> frozenset[str]:
        """The ODS codes responsible for a resource (every contributor, for the merged Patient).

        With ``own_access``, only the sources whose organisation keeps access
        to its own data through the gateway (policy ``custodianAccess``).
        """
        names = set()
        src = resource.get("meta", {}).get("source")
        if src in s.sources:
            names.add(s.sources[src])
        elif resource.get("resourceType") == "Patient":
            for ident in resource.get("identifier", ()):
                if ident.get("system") in s.sources:
                    names.add(s.sources[ident["system"]])
        out = set()
        if own_access:
            names &= set(self.policy.source.custodianAccess)
        for name in names:
            ods = self.policy.custodian(name)
            if ods == REGISTERED_PRACTICE:
                ods = s.registered_practice
            if ods:
                out.add(ods)
        return frozenset(out)

    def _decide(self, s: Situation, r: Json) -> Decision:
        policy = self.policy
        cats = policy.categories_of(r)
        actor = s.actor
        if actor.patient is not None:
            hidden = sorted(c for c in cats if not policy.categories[c].citizenMayView)
            if hidden:
                return Decision(False, "policy", f"{hidden[0]} is not shown to the patient")
            return Decision(True, "citizen", "the patient's own record", (), cats)
        if self._own(s, r):
            return Decision(True, "custodian", "the organisation's own data", (), cats)
        if actor.purpose not in policy.source.directCarePurposes:
            return Decision(False, "purpose", f"purpose {actor.purpose} is not direct care")
        if not cats and not s.directives:
            return IMPLIED  # the common case, without building anything
        verdict, named, ids = self._consents(s, r, cats)
        if verdict == DENY:
            return Decision(False, "objection", "the patient's consent denies it", ids, cats)
        unlocked = named if verdict == PERMIT else frozenset()
        restricted = sorted(
            c for c in cats if c not in unlocked and actor.role not in policy.categories[c].roles
        )
        if restricted:
            return Decision(
                False, "sensitive", f"{restricted[0]} needs the patient's consent", ids, cats
            )
        if verdict == PERMIT:
            return Decision(True, "consent", "the patient's consent permits it", ids, cats)
        return Decision(True, "policy", IMPLIED.reason, (), cats) if cats else IMPLIED

    def _overridable(self, d: Decision) -> bool:
        overrides = self.policy.source.breakGlass.overrides
        return (d.basis == "objection" and "objection" in overrides) or (
            d.basis == "sensitive" and "sensitive" in overrides
        )

    def _consents(
        self, s: Situation, r: Json, cats: frozenset[str]
    ) -> tuple[str | None, frozenset[str], tuple[str, ...]]:
        if not s.directives:
            return None, frozenset(), ()
        verdicts: list[tuple[str, frozenset[str], str]] = []
        for d in s.directives:
            if d.status != "active":
                continue
            got = self._evaluate(d.provision, s, r, cats, frozenset())
            if got is not None:
                verdicts.append((*got, d.id))
        denies = tuple(i for v, _, i in verdicts if v == DENY)
        if denies:
            return DENY, frozenset(), denies
        if verdicts:
            named = frozenset().union(*(n for _, n, _ in verdicts))
            return PERMIT, named, tuple(i for _, _, i in verdicts)
        return None, frozenset(), ()

    def _evaluate(
        self,
        p: Provision,
        s: Situation,
        r: Json,
        cats: frozenset[str],
        named: frozenset[str],
    ) -> tuple[str, frozenset[str]] | None:
        if not self._applies(p, s, r, cats):
            return None
        verdict, names = p.type, named | (p.labels & cats)
        inner = [
            got
            for child in p.children
            if (got := self._evaluate(child, s, r, cats, names)) is not None
        ]
        if inner:
            deny = [g for g in inner if g[0] == DENY]
            return deny[0] if deny else inner[0]
        return verdict, names

    def _actor_applies(self, p: Provision, s: Situation, r: Json) -> bool:
        """Recipient actors match the caller; custodian actors match when every organisation
        responsible for the resource is named (the merged Patient has several)."""
        actor = s.actor
        for a in p.actors:
            if not a.custodian and (
                (a.system == ODS_SYSTEM and a.value == actor.organisation)
                or (a.system == ROLE_SYSTEM and a.value == actor.role)
            ):
                return True
        named = {a.value for a in p.actors if a.custodian and a.system == ODS_SYSTEM}
        if named:
            custodians = self.custodians(s, r)
            return bool(custodians) and custodians <= named
        return False

    def _applies(self, p: Provision, s: Situation, r: Json, cats: frozenset[str]) -> bool:
        actor = s.actor
        if p.period is not None and not p.period.holds(s.now):
            return False
        if p.actions and not p.actions & GATEWAY_ACTIONS:
            return False
        if p.actors and not self._actor_applies(p, s, r):
            return False
        if p.purposes and actor.purpose not in p.purposes:
            return False
        if p.labels:
            own = {str(lab.get("code")) for lab in r.get("meta", {}).get("security", ())}
            if not p.labels & (cats | own):
                return False
        if p.classes and r.get("resourceType") not in p.classes:
            return False
        if p.codes:
            mine = {
                (str(c.get("system", "")), str(c.get("code")))
                for key in ("code", "vaccineCode", "medicationCodeableConcept")
                for c in (r.get(key) or {}).get("coding", ())
            }
            if not p.codes & mine:
                return False
        if p.data and f"{r.get('resourceType')}/{r.get('id')}" not in p.data:
            return False
        if p.data_period is not None:
            when = _clinical_date(r)
            if when is None:
                # Undated data: a deny still covers it, a permit does not reach it.
                return p.type == DENY
            if not p.data_period.holds(when):
                return False
        return True


def _clinical_date(r: Json) -> datetime | None:
    for key in DATE_KEYS:
        if isinstance(r.get(key), str):
            try:
                return instant(r[key])
            except ValueError:
                return None
    for key in ("effectivePeriod", "period"):
        start = (r.get(key) or {}).get("start")
        if isinstance(start, str):
            try:
                return instant(start)
            except ValueError:
                return None
    return None


CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def label(resource: Json, d: Decision) -> Json:
    """The resource with security labels saying what handling applies (a new dict)."""
    extra: list[Json] = []
    if d.categories:
        extra.append({"system": CONFIDENTIALITY, "code": "R", "display": "restricted"})
        extra.append(
            {
                "system": ACT_CODE,
                "code": "NORDSCLCD",
                "display": "no redisclosure without consent directive",
            }
        )
    if d.basis == "break-glass":
        extra.append({"system": ACT_REASON, "code": "BTG", "display": "break the glass"})
    if not extra:
        return resource
    meta = dict(resource.get("meta", {}))
    have = {(x.get("system"), x.get("code")) for x in meta.get("security", ())}
    meta["security"] = [
        *meta.get("security", ()),
        *(x for x in extra if (x["system"], x["code"]) not in have),
    ]
    return {**resource, "meta": meta}
