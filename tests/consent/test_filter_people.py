"""``Guard.filter_people`` (a batch of a search's matches decided at once) decides each
person as a ``situation`` and a ``filter`` of their own do, break-glass grants included."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.consent import Actor, FilterMemo
from carelink.consent.directive import ODS_SYSTEM
from tests.consent.test_filter_memo import (
    T0,
    Clock,
    actors,
    consent_sets,
    grant_row,
    guard,
    patients,
    same,
    steps,
    store,  # noqa: F401 - the fixture
)
from tests.support.consents import privacy_consent


@st.composite
def batches(draw: Any) -> list[tuple[str, dict[str, Any], list[tuple[str, bytes]], bool]]:
    """People as a search finds them: id, Patient, active consents (some have none), and
    whether the caller holds a break-glass grant for them."""
    out = []
    for i in range(draw(st.integers(0, 5))):
        patient = {**draw(patients()), "id": f"p{i}"}
        out.append((f"p{i}", patient, draw(consent_sets()), draw(st.booleans())))
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches(), actors)
def test_a_batch_is_decided_as_each_person_alone(store, batch, actor: Actor):  # noqa: F811
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM break_glass")
    for pid, _, _, granted in batch:
        if granted:
            store.grant(grant_row(f"g-{pid}", pid, actor, T0))
    g = guard(store, Clock(), None)
    held = {pid: consents for pid, _, consents, _ in batch if consents}
    got = g.filter_people(actor, [(pid, patient) for pid, patient, _, _ in batch], held)
    want = [
        g.filter(g.situation(actor, pid, patient, consents), [patient])
        for pid, patient, consents, _ in batch
    ]
    assert len(got) == len(want)
    assert all(same(a, b) for a, b in zip(got, want, strict=True)), (got, want)


def _consents(provision: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [("c9", orjson.dumps({**privacy_consent("p1", provision), "id": "c9"}))]


#: Consents that change what a search shows of a Patient: none, an objection to everyone,
#: and one to the acute trust's data only (its local identifiers trimmed), or else any
choices = st.one_of(
    st.sampled_from(
        [
            [],
            _consents({"type": "deny"}),
            _consents(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "actor": [
                                {
                                    "role": {"coding": [{"code": "CST"}]},
                                    "reference": {
                                        "identifier": {"system": ODS_SYSTEM, "value": "RAC00"}
                                    },
                                }
                            ],
                        }
                    ],
                }
            ),
        ]
    ),
    consent_sets(),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(patients(), min_size=2, max_size=2),
    st.lists(actors, min_size=2, max_size=2),
    st.lists(choices, min_size=2, max_size=2),
    st.lists(steps, min_size=1, max_size=12),
)
def test_shared_patients_are_answered_as_decided_afresh_whatever_changed_between(
    store,  # noqa: F811
    patients_: list[dict[str, Any]],
    actors_: list[Actor],
    consents_: list[list[tuple[str, bytes]]],
    run: list[tuple[int, int, str, int, bool, float, str | None]],
):
    """The lookup's case: the very same Patient objects asked about again and again
    (``ParsedPatients``) while the person's Consents, break-glass grants and the time
    change between requests (``steps``, their practice aside: it is in the Patient, which
    stays the very same object). Each answer is the answer a guard without a memo gives."""
    for i, p in enumerate(patients_):  # one registered with the caller's practice, one not
        p["generalPractitioner"] = [
            {"identifier": {"system": ODS_SYSTEM, "value": f"B0000{i + 1}"}}
        ]
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM break_glass")
    clock = Clock()
    memo = FilterMemo(maxsize=4)
    remembering, fresh = guard(store, clock, memo), guard(store, clock, None)
    for n, (which, who, pid, consents, grant, later, _) in enumerate(run):
        clock.now += later
        actor = actors_[who]
        if grant:
            store.grant(grant_row(f"g{n}", pid, actor, clock.now))
        held = {pid: consents_[consents]}
        person = [(pid, patients_[which % 2])]
        (got,) = remembering.filter_people(actor, person, held, shared=True)
        (want,) = fresh.filter_people(actor, person, held)
        assert same(got, want), (got, want)
        got.resources.clear()  # the caller's list is its own


def test_shared_patients_are_remembered_and_others_are_not(store):  # noqa: F811
    """Only a batch of shared Patients goes into the memo: a Patient parsed anew for each
    request would only push the records' answers out of it. (A person holding Consents:
    one without any, and nothing sensitive, is shown without a decision to remember.)"""
    memo = FilterMemo()
    g = guard(store, Clock(), memo)
    actor = Actor("dr", "R8000", "B00001", "TREAT", None, "id")
    patient = {"resourceType": "Patient", "id": "p1"}
    held = {"p1": _consents({"type": "permit"})}
    g.filter_people(actor, [("p1", patient)], held)
    assert len(memo) == 0
    first = g.filter_people(actor, [("p1", patient)], held, shared=True)
    assert len(memo) == 1
    again = g.filter_people(actor, [("p1", patient)], held, shared=True)
    assert same(first[0], again[0])
    assert again[0].resources[0] is patient  # shown as stored: the very object


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return super().__call__()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches(), actors)
def test_a_batch_reads_the_clock_only_when_a_person_needs_a_decision(
    store,  # noqa: F811
    batch,
    actor: Actor,
):
    """No reading when every person is shown as is (the lookup's usual answer); else
    the batch is decided at a reading (what it decides: the test above)."""
    clock = CountingClock()
    g = guard(store, clock, None)
    held = {pid: consents for pid, _, consents, _ in batch if consents}
    g.filter_people(actor, [(pid, patient) for pid, patient, _, _ in batch], held)
    as_is = all(
        not held.get(pid) and g.engine.shown_as_is(actor, patient) for pid, patient, _, _ in batch
    )
    assert (clock.readings == 0) == as_is
