"""Who may see and change a patient's Consents, and which changes are reviewed.

Policy is data (``consentAccess`` in the policy file); this module only reads
it. The patient (a patient-context token: the citizen or someone acting for
them) may see and, where ``citizensManageOwn``, change their own choices.
Privacy officers may for anyone; the registered practice for its own
patients (``Patient.generalPractitioner`` ODS = the caller's organisation).
Anyone else is answered exactly as if the patient or the Consent did not
exist, so the consent routes cannot be used to find out who objected.

A change by anyone but the patient that withdraws an objection, or that
permits a sensitive category, is reviewable: ``review_reason`` says why, and
the API raises a review Task for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from carelink.consent.decision import Actor
from carelink.consent.policy import Policy

Json = dict[str, Any]


def may_see(policy: Policy, actor: Actor, patient_id: str, practice: str | None) -> bool:
    """May ``actor`` read, search or consult about ``patient_id``'s Consents?"""
    if actor.patient is not None:
        return actor.patient == patient_id
    access = policy.source.consentAccess
    if actor.role is None:
        return False
    if actor.role in access.privacyOfficers:
        return True
    return (
        actor.role in access.registeredPracticeRoles
        and practice is not None
        and actor.organisation == practice
    )


def may_change(policy: Policy, actor: Actor, patient_id: str, practice: str | None) -> bool:
    """May ``actor`` record, change or revoke ``patient_id``'s Consents? (``may_see`` first.)"""
    if not may_see(policy, actor, patient_id, practice):
        return False
    if actor.patient is not None:
        return policy.source.citizensManageOwn
    return actor.role in policy.source.consentManagers


def _provisions(p: Json) -> Iterator[Json]:
    yield p
    for child in p.get("provision", ()) or ():
        if isinstance(child, dict):
            yield from _provisions(child)


def provision_count(consent: Json) -> int:
    """How many provisions a Consent holds, at every level."""
    top = consent.get("provision")
    return sum(1 for _ in _provisions(top)) if isinstance(top, dict) else 0


def objects(consent: Json | None) -> bool:
    """Is this an active Consent with a deny anywhere (an objection)?"""
    if not consent or consent.get("status") != "active":
        return False
    top = consent.get("provision")
    return isinstance(top, dict) and any(p.get("type") == "deny" for p in _provisions(top))


def sensitive_permits(policy: Policy, consent: Json | None) -> frozenset[str]:
    """The sensitive categories an active Consent's permits name by security label."""
    if not consent or consent.get("status") != "active":
        return frozenset()
    top = consent.get("provision")
    if not isinstance(top, dict):
        return frozenset()
    found = set()
    for p in _provisions(top):
        if p.get("type") != "permit":
            continue
        for lab in p.get("securityLabel", ()) or ():
            cat = policy.by_label.get((str(lab.get("system", "")), str(lab.get("code", ""))))
            if cat:
                found.add(cat)
    return frozenset(found)


def review_reason(
    policy: Policy, actor: Actor, before: Json | None, after: Json | None
) -> str | None:
    """Why a change (``before`` -> ``after``; None = absent) must be reviewed, or None."""
    if actor.patient is not None:
        return None
    wanted = policy.source.consentAccess.reviewChanges
    if "withdraw-objection" in wanted and objects(before) and not objects(after):
        return "withdraws the patient's objection"
    if "sensitive-permit" in wanted:
        unlocked = sensitive_permits(policy, after) - sensitive_permits(policy, before)
        if unlocked:
            return f"permits sensitive categories {', '.join(sorted(unlocked))}"
    return None
