"""The search's short cut: a person found who holds no Consents and nothing sensitive is
shown as is without deciding (``Engine.shown_as_is`` in ``Guard.filter_people``), and
that is, whatever the policy, the Patient, the caller and the break-glass grants, the
answer the full decision gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.consent import Actor, Engine, FilterMemo, Guard
from carelink.consent.directive import ODS_SYSTEM
from carelink.consent.policy import Policy, from_document
from carelink.sources.base import local_id_system, source_uri
from tests.consent.test_filter_memo import (
    ACT,
    ORGS,
    ROLES,
    SCT,
    SOURCES,
    Clock,
    grant_row,
    same,
    store,  # noqa: F401 - the fixture
)
from tests.consent.test_filter_people import choices
from tests.support.shared import SYNTHEA
from tests.support.shared import UKCORE_EXAMPLES as UKCORE

DOCUMENT = json.loads((Path(__file__).parents[2] / "consent" / "policy.json").read_text())
PURPOSES = ("TREAT", "ETREAT", "CAREMGT", "HRESCH")
#: labels the policy may or may not make sensitive, and one of another system
LABELS = ((ACT, "HIV"), (ACT, "PSY"), (ACT, "SDV"), (ACT, "R"), ("urn:other", "HIV"))


@st.composite
def policies(draw: Any) -> Policy:
    """The shipped policy with its purposes, custodians, categories (labels, codes, roles,
    the citizen's view) redrawn."""
    doc = json.loads(json.dumps(DOCUMENT))
    doc["directCarePurposes"] = draw(
        st.lists(st.sampled_from(PURPOSES), min_size=1, max_size=3, unique=True)
    )
    doc["custodianAccess"] = draw(st.lists(st.sampled_from(SOURCES), max_size=2, unique=True))
    kept = draw(st.lists(st.sampled_from(doc["categories"]), min_size=0, max_size=4, unique_by=str))
    for c in kept:
        c["roles"] = draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True))
        c["citizenMayView"] = draw(st.booleans())
        if draw(st.booleans()):
            c["codes"] = [{"system": SCT, "code": "86406008"}]
    doc["categories"] = kept
    codes = {c["code"] for c in kept}
    doc["secondaryUseExcludes"] = [c for c in doc["secondaryUseExcludes"] if c in codes]
    return from_document(doc)


@st.composite
def patients(draw: Any, pid: str) -> dict[str, Any]:
    """A merged Patient: identifiers of some sources, a registered practice or none,
    sometimes labels (sensitive under some policies), a ``meta.source``, a code."""
    meta: dict[str, Any] = {}
    labels = draw(st.lists(st.sampled_from(LABELS), max_size=2, unique=True))
    if labels:
        meta["security"] = [{"system": s, "code": c} for s, c in labels]
    if draw(st.integers(0, 3)) == 0:
        meta["source"] = source_uri(draw(st.sampled_from(SOURCES)))
    p: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "meta": meta,
        "identifier": [
            {"system": local_id_system(n), "value": "L1"}
            for n in draw(st.lists(st.sampled_from(SOURCES), max_size=4, unique=True))
        ],
    }
    practice = draw(st.sampled_from([*ORGS, None]))
    if practice:
        p["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": practice}}]
    if draw(st.integers(0, 4)) == 0:
        p["code"] = {"coding": [{"system": SCT, "code": "86406008"}]}
    return p


actors = st.builds(
    lambda role, org, purpose, citizen: Actor(
        "dr", role, org, purpose, "p0" if citizen else None, f"id-{org}-{role}"
    ),
    st.sampled_from(ROLES),
    st.one_of(st.sampled_from(ORGS), st.none()),
    st.sampled_from(PURPOSES),
    st.integers(0, 4).map(lambda n: n == 0),
)


@st.composite
def batches(draw: Any) -> list[tuple[str, dict[str, Any], list[tuple[str, bytes]], bool]]:
    """People as a search finds them: half without Consents (the short cut's case), the
    others with an objection, one to a source's data, or any Consents; some with a
    break-glass grant."""
    out = []
    for i in range(draw(st.integers(1, 5))):
        consents = draw(choices) if draw(st.booleans()) else []
        out.append((f"p{i}", draw(patients(f"p{i}")), consents, draw(st.booleans())))
    return out


def guard(consents: Any, policy: Policy, memo: FilterMemo | None = None) -> Guard:
    return Guard(
        Engine(policy),
        consents,
        {source_uri(n): n for n in SOURCES},
        {local_id_system(n): n for n in SOURCES},
        Clock(),
        memo,
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(policies(), batches(), actors, st.booleans())
def test_people_shown_as_is_get_the_full_decisions_answer(
    store,  # noqa: F811
    policy: Policy,
    batch: list[tuple[str, dict[str, Any], list[tuple[str, bytes]], bool]],
    actor: Actor,
    shared: bool,
):
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM break_glass")
    for pid, _, _, granted in batch:
        if granted:
            store.grant(grant_row(f"g-{pid}", pid, actor, Clock().now))
    g = guard(store, policy, FilterMemo() if shared else None)
    held = {pid: consents for pid, _, consents, _ in batch if consents}
    got = g.filter_people(actor, [(pid, p) for pid, p, _, _ in batch], held, shared)
    decided = [g.filter(g.situation(actor, pid, p, consents), [p]) for pid, p, consents, _ in batch]
    assert len(got) == len(decided)
    for a, b in zip(got, decided, strict=True):
        assert same(a, b), (policy.source.model_dump(), actor, a, b)


def test_a_plain_person_is_shown_as_stored_and_not_remembered(store):  # noqa: F811
    """No Consents, nothing sensitive: the very Patient object, nothing put in the memo
    (which a search's many people met once would only churn)."""
    memo = FilterMemo()
    g = guard(store, from_document(DOCUMENT), memo)
    actor = Actor("dr", "R8003", "RXX01", "TREAT", None, "id")
    patient = {"resourceType": "Patient", "id": "p1"}
    (got,) = g.filter_people(actor, [("p1", patient)], {}, shared=True)
    assert got.resources[0] is patient
    assert len(memo) == 0


def test_a_sensitive_person_without_consents_is_still_decided(store):  # noqa: F811
    """A Patient labelled safeguarding is withheld from a role the policy does not let see
    it, Consents or none."""
    g = guard(store, from_document(DOCUMENT))
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"security": [{"system": ACT, "code": "SDV"}]},
    }
    nurse = Actor("rn", "R8003", "RXX01", "TREAT", None, "id")
    doctor = Actor("dr", "R8000", "RXX01", "TREAT", None, "id")
    (hidden,) = g.filter_people(nurse, [("p1", patient)], {})
    (shown,) = g.filter_people(doctor, [("p1", patient)], {})
    assert hidden.resources == []
    assert hidden.withheld == 1
    assert shown.resources[0]["meta"]["security"][-1]["code"] == "NORDSCLCD"


def test_a_purpose_not_for_direct_care_is_still_decided(store):  # noqa: F811
    """Research is not direct care: a plain Patient is withheld unless the caller's
    organisation is its custodian."""
    g = guard(store, from_document(DOCUMENT))
    patient = {"resourceType": "Patient", "id": "p1"}
    research = Actor("dr", "R8000", "RXX01", "HRESCH", None, "id")
    (got,) = g.filter_people(research, [("p1", patient)], {})
    assert got.resources == []


def _outside() -> list[dict[str, Any]]:
    """Patients we did not make: the Synthea export's and the UK Core examples', each with
    its own identifiers, names, extensions and (UK Core) registered practice."""
    people = [
        json.loads(line)
        for line in (SYNTHEA / "Patient.000.ndjson").read_text().splitlines()
        if line.strip()
    ]
    people += [json.loads(p.read_text()) for p in sorted(UKCORE.glob("UKCore-Patient-*.json"))]
    return people


OUTSIDE = _outside() if SYNTHEA.exists() and UKCORE.exists() else []


@pytest.mark.skipif(not OUTSIDE, reason="the outside samples are not present")
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    policies(),
    st.sampled_from(range(max(len(OUTSIDE), 1))),
    st.lists(st.sampled_from(LABELS), max_size=2, unique=True),
    st.one_of(st.none(), st.sampled_from(SOURCES)),
    actors,
)
def test_outside_patients_shown_as_is_get_the_full_decisions_answer(
    store,  # noqa: F811
    policy: Policy,
    n: int,
    labels: list[tuple[str, str]],
    source: str | None,
    actor: Actor,
):
    """The short cut against Patients we did not make, labelled or not, from a source or
    merged: what a search shows of each person without Consents equals the full decision."""
    patient = json.loads(json.dumps(OUTSIDE[n]))
    meta = patient.setdefault("meta", {})
    if labels:
        meta["security"] = [
            *meta.get("security", []),
            *({"system": s, "code": c} for s, c in labels),
        ]
    if source:
        meta["source"] = source_uri(source)
    g = guard(store, policy)
    (got,) = g.filter_people(actor, [("p0", patient)], {})
    decided = g.filter(g.situation(actor, "p0", patient, []), [patient])
    assert same(got, decided), (policy.source.model_dump(), actor, labels, source)
