"""``unmarked``: what the patient index decides of a Patient when it writes it
(``PersonRow.plain``), for every consent policy that may later read it.

A Patient unmarked (no ``meta.security``, no coded element ``categories_of`` reads) has
no category under any policy, and is shown as it is to any caller consent shows
unmarked data to (``Engine.shows_unmarked``) when the patient holds no Consents: the
full decision's answer is the Patient itself. ``categories_of``, which now begins with
``unmarked``, answers as it did before (the reference below is its former body)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.consent import Actor, Engine
from carelink.consent.policy import Policy, unmarked
from carelink.federation.index import is_plain
from tests.consent.test_filter_memo import SCT, store  # noqa: F401 - the fixture
from tests.consent.test_shown_as_is import LABELS, actors, guard, patients, policies

#: what a coded element or ``meta.security`` may hold, empty or not, well formed or not
CODED = st.one_of(
    st.none(),
    st.just({}),
    st.just({"coding": []}),
    st.builds(
        lambda code: {"coding": [{"system": SCT, "code": code}]},
        st.sampled_from(["86406008", "38341003", "1"]),
    ),
)
SECURITY = st.one_of(
    st.just([]),
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=2).map(
        lambda labels: [{"system": s, "code": c} for s, c in labels]
    ),
)


@st.composite
def resources(draw: Any) -> dict[str, Any]:
    """A drawn Patient with its ``meta.security`` and each coded element absent, empty
    or set (``patients`` draws the usual ones)."""
    r = dict(draw(patients(draw(st.sampled_from(["p0", "p1"])))))
    meta = dict(r.get("meta", {}))
    meta.pop("security", None)
    if draw(st.booleans()):
        meta["security"] = draw(SECURITY)
    r["meta"] = meta
    for key in ("code", "vaccineCode", "medicationCodeableConcept"):
        r.pop(key, None)
        if draw(st.integers(0, 2)) == 0:
            r[key] = draw(CODED)
    return r


def former_categories(policy: Policy, resource: dict[str, Any]) -> frozenset[str]:
    """What ``categories_of`` gave before it began with ``unmarked``: the category of each
    security label the policy names, and, when it names codes, of each coding of the
    coded elements that hold anything."""
    labels = [
        (x.get("system", ""), x.get("code", ""))
        for x in resource.get("meta", {}).get("security", ())
    ]
    coded = [resource.get(k) for k in ("code", "vaccineCode", "medicationCodeableConcept")]
    codings = [
        (c.get("system", ""), c.get("code", ""))
        for concept in (coded if policy.by_code else [])
        if concept
        for c in concept.get("coding", ())
    ]
    return frozenset(
        {policy.by_label[x] for x in labels if policy.by_label.get(x)}
        | {policy.by_code[x] for x in codings if policy.by_code.get(x)}
    )


@settings(max_examples=500, deadline=None)
@given(policies(), resources())
def test_an_unmarked_resource_has_no_category_under_any_policy(
    policy: Policy, resource: dict[str, Any]
) -> None:
    got = policy.categories_of(resource)
    assert got == former_categories(policy, resource)
    if unmarked(resource):
        assert got == frozenset()


def test_what_marks_a_resource() -> None:
    """A label list, even empty, or a coded element that holds anything marks it."""
    assert unmarked({"resourceType": "Patient", "meta": {}})
    assert unmarked({"resourceType": "Patient", "code": None, "vaccineCode": {}})
    assert not unmarked({"resourceType": "Patient", "meta": {"security": []}})
    assert not unmarked({"resourceType": "Patient", "code": {"coding": []}})
    assert not unmarked({"medicationCodeableConcept": {"text": "x"}})


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(policies(), resources(), actors, st.sampled_from(["p0", "p1"]))
def test_a_plain_patient_without_consents_is_what_the_full_decision_shows(
    store,  # noqa: F811
    policy: Policy,
    patient: dict[str, Any],
    actor: Actor,
    pid: str,
) -> None:
    """``is_plain`` (``PersonRow.plain``): the Patient of ``pid``, unmarked. For such a
    person without Consents, ``shown_as_is`` is ``shows_unmarked`` whatever the Patient,
    and when it holds, the full decision (a situation, ``filter``) shows the very
    Patient, unlabelled, with nothing withheld and no break-glass."""
    if not is_plain(pid, patient):
        assert patient["id"] != pid or not unmarked(patient)
        return
    engine = Engine(policy)
    assert engine.shown_as_is(actor, patient) == engine.shows_unmarked(actor)
    if not engine.shows_unmarked(actor):
        return
    g = guard(store, policy)
    filtered = g.filter(g.situation(actor, pid, patient, []), [patient])
    assert len(filtered.resources) == 1
    assert filtered.resources[0] is patient
    assert (filtered.withheld, filtered.break_glass) == (0, False)
    (batch,) = g.filter_people(actor, [(pid, patient)], {})
    assert batch.resources[0] is patient
