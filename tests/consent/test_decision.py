"""The decision engine on plain dicts: every rule of its docstring, one case each."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carelink.consent import Actor, Engine, Situation
from carelink.consent.decision import label
from carelink.consent.directive import CONSENT_SCOPE, ODS_SYSTEM, directive
from carelink.consent.policy import load_policy

POLICY = load_policy(Path(__file__).parents[2] / "consent" / "policy.json")
ENGINE = Engine(POLICY)
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SOURCES = {f"urn:carelink:source:{n}": n for n in ("gp", "acute", "community", "social-care")}
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def resource(
    source: str = "acute", label: str | None = None, rtype: str = "Observation"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"source": f"urn:carelink:source:{source}"}
    if label:
        meta["security"] = [{"system": ACT, "code": label}]
    return {"resourceType": rtype, "id": "x", "meta": meta, "effectiveDateTime": "2024-05-01"}


def consent(provision: dict[str, Any], status: str = "active", cid: str = "c1") -> Any:
    return directive(
        {
            "resourceType": "Consent",
            "id": cid,
            "status": status,
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p"},
            "provision": provision,
        }
    )


def org(value: str, role: str = "IRCP") -> dict[str, Any]:
    return {
        "role": {"coding": [{"code": role}]},
        "reference": {"identifier": {"system": ODS_SYSTEM, "value": value}},
    }


def decide(r: dict[str, Any], *directives: Any, **who: Any) -> Any:
    a = {"subject": "u", "role": "R8000", "organisation": "RXX01", "purpose": "TREAT", **who}
    s = Situation(Actor(**a), "p", list(directives), NOW, SOURCES, registered_practice="B00001")
    return ENGINE.decide(s, r)


def test_implied_consent_permits_direct_care():
    d = decide(resource())
    assert (d.permit, d.basis) == (True, "policy")


@pytest.mark.parametrize("purpose", ["HRESCH", "HOPERAT", None])
def test_other_purposes_are_refused(purpose):
    assert decide(resource(), purpose=purpose).basis == "purpose"


def test_an_objection_denies_everyone_but_the_registered_practice_for_its_own_data():
    objection = consent({"type": "deny"})
    assert not decide(resource("acute"), objection).permit
    assert not decide(
        resource("acute"), objection, organisation="RAC00"
    ).permit  # not in custodianAccess
    assert decide(resource("gp"), objection, organisation="B00001").permit
    assert not decide(resource("acute"), objection, organisation="B00001").permit


def test_a_nested_deny_beats_the_permit_around_it_and_a_nested_permit_beats_that():
    tree = consent(
        {
            "type": "permit",
            "provision": [
                {
                    "type": "deny",
                    "securityLabel": [{"system": ACT, "code": "HIV"}],
                    "provision": [
                        {
                            "type": "permit",
                            "actor": [org("RNAMED")],
                            "securityLabel": [{"system": ACT, "code": "HIV"}],
                        }
                    ],
                }
            ],
        }
    )
    assert decide(resource(), tree).permit  # outer permit
    assert not decide(resource(label="HIV"), tree).permit  # nested deny
    named = decide(resource(label="HIV"), tree, organisation="RNAMED")
    assert (named.permit, named.basis) == (True, "consent")


def test_a_broad_permit_does_not_unlock_a_sensitive_category_it_does_not_name():
    assert not decide(resource(label="HIV"), consent({"type": "permit"})).permit


@pytest.mark.parametrize(
    "status", ["inactive", "draft", "proposed", "rejected", "entered-in-error"]
)
def test_only_active_consents_count(status):
    assert decide(resource(), consent({"type": "deny"}, status)).permit


@pytest.mark.parametrize(
    ("period", "in_force"),
    [
        ({"end": "2025-01-01"}, False),
        ({"start": "2027-01-01"}, False),
        ({"start": "2026-01-01", "end": "2026-12-31"}, True),
        ({"start": "2026-11-23", "end": "2026-11-23"}, True),  # a date covers its whole day
    ],
)
def test_a_consent_outside_its_period_has_no_effect(period, in_force):
    d = decide(resource(), consent({"type": "deny", "period": period}))
    assert d.permit is not in_force


def test_deny_overrides_across_consents():
    d = decide(resource(), consent({"type": "permit"}, cid="a"), consent({"type": "deny"}, cid="b"))
    assert (d.permit, d.consents) == (False, ("b",))


@pytest.mark.parametrize(
    ("provision", "denied"),
    [
        ({"type": "deny", "purpose": [{"code": "TREAT"}]}, True),
        ({"type": "deny", "purpose": [{"code": "ETREAT"}]}, False),
        ({"type": "deny", "class": [{"code": "Observation"}]}, True),
        ({"type": "deny", "class": [{"code": "Condition"}]}, False),
        ({"type": "deny", "dataPeriod": {"start": "2024-01-01", "end": "2024-12-31"}}, True),
        ({"type": "deny", "dataPeriod": {"start": "2025-01-01"}}, False),
        (
            {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/x"}}],
            },
            True,
        ),
        (
            {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/y"}}],
            },
            False,
        ),
        ({"type": "deny", "actor": [org("RAC00", "CST")]}, True),
        ({"type": "deny", "actor": [org("RCM00", "CST")]}, False),
        ({"type": "deny", "actor": [org("RXX01")]}, True),
        ({"type": "deny", "actor": [org("RYY02")]}, False),
        ({"type": "deny", "action": [{"coding": [{"code": "collect"}]}]}, False),
    ],
)
def test_each_provision_element_narrows_what_it_applies_to(provision, denied):
    assert decide(resource(), consent(provision)).permit is not denied


def test_citizens_see_their_own_record_except_what_the_policy_keeps_from_them():
    me = {"patient": "p", "role": None, "organisation": None, "purpose": "PATRQT"}
    assert decide(resource(label="HIV"), **me).permit
    assert not decide(resource(label="SDV"), **me).permit


def test_break_glass_overrides_objection_and_sensitivity_and_says_so():
    objection = consent({"type": "deny"})
    a = Actor("u", "R8000", "RXX01", "TREAT")
    s = Situation(a, "p", [objection], NOW, SOURCES, None, break_glass=True)
    d = ENGINE.decide(s, resource(label="HIV"))
    assert (d.permit, d.basis) == (True, "break-glass")
    purpose = Situation(Actor("u", "R8000", "RXX01", "HRESCH"), "p", [], NOW, SOURCES, None, True)
    assert not ENGINE.decide(purpose, resource()).permit  # never for a non-direct-care purpose


def test_sensitive_data_a_role_may_see_is_labelled_restricted():
    d = decide(resource(label="PSY"))
    assert (d.permit, d.categories) == (True, frozenset({"PSY"}))
    labelled = label(resource(label="PSY"), d)
    codes = {s["code"] for s in labelled["meta"]["security"]}
    assert {"PSY", "R", "NORDSCLCD"} <= codes
    plain = resource()
    assert label(plain, decide(plain)) is plain  # nothing to say, nothing copied
    assert not decide(resource(label="PSY"), role="R8008").permit  # a role the category omits


def secondary(r: dict[str, Any], *directives: Any, objections: bool = True, **who: Any) -> Any:
    a = {"subject": "project:p", "role": None, "organisation": None, "purpose": "HRESCH", **who}
    s = Situation(Actor(**a), "p", list(directives), NOW, SOURCES, registered_practice="B00001")
    return ENGINE.for_secondary_use(s, r, objections)


def test_secondary_use_keeps_out_the_excluded_categories_whatever_the_consent_says():
    unlock = consent({"type": "permit", "securityLabel": [{"system": ACT, "code": "HIV"}]})
    d = secondary(resource(label="HIV"), unlock)
    assert (d.permit, d.basis) == (False, "sensitive")
    assert secondary(resource(label="PSY")).permit  # not excluded by the shipped policy


@pytest.mark.parametrize(
    ("provision", "denied"),
    [
        ({"type": "deny"}, True),  # an objection naming no purpose covers every purpose
        ({"type": "deny", "purpose": [{"code": "HRESCH"}]}, True),
        ({"type": "deny", "purpose": [{"code": "TREAT"}]}, False),  # direct care only
        ({"type": "deny", "actor": [org("RAC00", "CST")]}, True),  # data held by the trust
        ({"type": "deny", "actor": [org("RXX01")]}, False),  # a recipient, not the project
        ({"type": "deny", "class": [{"code": "Condition"}]}, False),
    ],
)
def test_secondary_use_reads_consents_for_the_extract_purpose(provision, denied):
    d = secondary(resource("acute"), consent(provision))
    assert d.permit is not denied
    if denied:
        assert (d.basis, d.consents) == ("objection", ("c1",))


def test_secondary_use_ignores_consents_where_the_policy_says_so():
    assert secondary(resource(), consent({"type": "deny"}), objections=False).permit
