"""Who may see and change whose Consents, and which changes are reviewed (policy consentAccess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from carelink.consent import Actor
from carelink.consent.policy import load_policy
from carelink.consent.stewardship import (
    may_change,
    may_see,
    provision_count,
    review_reason,
)

SHIPPED = Path(__file__).parents[2] / "consent" / "policy.json"
POLICY = load_policy(SHIPPED)
HIV = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}
PRACTICE = "B86001"


def clinician(role: str = "R8000", org: str = PRACTICE) -> Actor:
    return Actor("dr", role, org, "TREAT")


CITIZEN = Actor("me", None, None, "PATRQT", "p1")


@pytest.mark.parametrize(
    ("who", "sees", "changes"),
    [
        (CITIZEN, True, True),
        (Actor("me", None, None, "PATRQT", "p2"), False, False),  # someone else's record
        (clinician(), True, True),  # the registered practice's doctor
        (clinician(role="R8003"), True, False),  # sees, but not a consentManager
        (clinician(role="R8008"), False, False),  # a clerk at the practice
        (clinician(org="RXX01"), False, False),  # a doctor elsewhere
        (clinician(role="R0001", org="RXX01"), True, True),  # a privacy officer
        (Actor("bot", None, None, "TREAT"), False, False),  # no role at all
    ],
)
def test_who_may_see_and_change_a_patients_consents(who, sees, changes):
    assert may_see(POLICY, who, "p1", PRACTICE) is sees
    assert may_change(POLICY, who, "p1", PRACTICE) is changes


def test_without_a_known_practice_only_the_patient_and_privacy_officers_see():
    assert not may_see(POLICY, clinician(), "p1", None)
    assert may_see(POLICY, clinician(role="R5105", org="X"), "p1", None)
    assert may_see(POLICY, CITIZEN, "p1", None)


def consent(status: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Consent", "status": status, "provision": provision}


OBJECTION = consent("active", {"type": "permit", "provision": [{"type": "deny"}]})
WITHDRAWN = consent("inactive", {"type": "permit", "provision": [{"type": "deny"}]})
HIV_PERMIT = consent("active", {"type": "permit", "securityLabel": [HIV]})


@pytest.mark.parametrize(
    ("before", "after", "reviewed"),
    [
        (OBJECTION, WITHDRAWN, "withdraws"),
        (OBJECTION, None, "withdraws"),
        (None, OBJECTION, None),  # recording an objection restricts: not reviewed
        (None, HIV_PERMIT, "HIV"),
        (HIV_PERMIT, HIV_PERMIT, None),  # nothing newly unlocked
        (None, consent("active", {"type": "permit"}), None),
        (None, consent("draft", {"type": "permit", "securityLabel": [HIV]}), None),
    ],
)
def test_which_changes_by_someone_else_are_reviewed(before, after, reviewed):
    why = review_reason(POLICY, clinician(), before, after)
    if reviewed is None:
        assert why is None
    else:
        assert why is not None
        assert reviewed in why
    assert review_reason(POLICY, CITIZEN, before, after) is None  # the patient's own choice


def test_provisions_are_counted_at_every_level():
    nested = {"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}
    assert provision_count(consent("active", nested)) == 3
    assert provision_count({"resourceType": "Consent"}) == 0
