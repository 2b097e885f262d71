"""People changed at a running simulator, and each simulator's change listing refusing what
it cannot read."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from carelink.simulators import community, gp, social_care
from carelink.simulators.base import Behaviour
from carelink.simulators.changes import PatientChanges
from tests.support.servers import run_app

PATIENT = {"resourceType": "Patient", "name": [{"family": "Quenby"}], "birthDate": "1950-01-01"}


def test_changes_are_stamped_in_strict_order_even_on_a_clock_that_stands_still():
    moment = datetime(2026, 11, 30, 12, tzinfo=UTC)
    changes = PatientChanges(clock=lambda: moment)
    changes.put("A", PATIENT)
    changes.put("B", PATIENT)
    changes.delete("C")
    changes.put("A", {**PATIENT, "active": False})
    assert [c.local for c in changes.since("2026-11-30T11:59:59Z")] == ["B", "C", "A"]
    assert [c.local for c in changes.since(changes.latest["B"].instant)] == ["C", "A"]
    assert changes.listed(["X", "C", "Y"]) == ["X", "Y", "B", "A"]  # added, by last change
    assert changes.patient("C", lambda local: PATIENT) is None
    assert changes.patient("Y", lambda local: {"id": local}) == {"id": "Y"}
    with pytest.raises(ValueError, match="isoformat"):
        changes.since("yesterday")


@pytest.mark.parametrize(
    ("sim", "path"),
    [
        (community, "/hl7/changes?since=yesterday"),
        (community, "/hl7/changes?since=20261130"),
        (social_care, "/api/v2/persons/changes?since=30/11/2026"),
        (gp, "/Bundle?_lastUpdated=2026-11-30T12:00:00Z"),
        (gp, "/Bundle?_lastUpdated=gtnever"),
    ],
)
def test_a_change_listing_asked_for_with_a_bad_instant_is_a_400(sim, path):
    with run_app(sim.create_app(seed=1, size=20, behaviour=Behaviour())) as base:
        assert httpx.get(f"{base}{path}", timeout=10).status_code == 400


@pytest.mark.parametrize("sim", [community, gp, social_care])
def test_a_change_that_is_not_an_r4_patient_is_refused(sim):
    with run_app(sim.create_app(seed=1, size=20, behaviour=Behaviour())) as base:
        url = f"{base}/_admin/patients/Z1"
        assert httpx.put(url, content=b"{nope", timeout=10).status_code == 400
        assert httpx.put(url, json={"resourceType": "Bundle"}, timeout=10).status_code == 400
        assert httpx.put(url, json=PATIENT, timeout=10).status_code == 200
