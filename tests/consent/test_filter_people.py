"""``Guard.filter_people`` (a batch of a search's matches decided at once) decides each
person as a ``situation`` and a ``filter`` of their own do, break-glass grants included."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.consent import Actor
from tests.consent.test_filter_memo import (
    T0,
    Clock,
    actors,
    consent_sets,
    grant_row,
    guard,
    patients,
    same,
    store,  # noqa: F401 - the fixture
)


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
