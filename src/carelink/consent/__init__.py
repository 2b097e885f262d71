"""Consent for direct care: the ICS policy, patients' Consents, the decision, break-glass."""

from carelink.consent.decision import Actor, Decision, Engine, Situation
from carelink.consent.guard import Filtered, FilterMemo, Guard
from carelink.consent.policy import Policy, load_policy
from carelink.consent.validate import validate

__all__ = [
    "Actor",
    "Decision",
    "Engine",
    "FilterMemo",
    "Filtered",
    "Guard",
    "Policy",
    "Situation",
    "load_policy",
    "validate",
]
