"""People changed at a running simulator, and each simulator's change listing refusing what
it cannot read."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
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


def test_a_kept_patient_shares_nothing_with_what_the_caller_still_holds():
    """A caller that goes on changing the Patient it handed over (or hands the same one
    over twice, as the test above does) changes nothing kept: a change the feed never
    listed would otherwise show in every later answer, under the old change's stamp."""
    changes = PatientChanges(clock=lambda: datetime(2026, 11, 30, 12, tzinfo=UTC))
    sent = {
        "resourceType": "Patient",
        "name": [{"family": "Quenby", "given": ["Ann"]}],
        "meta": {"security": [{"system": "urn:s", "code": "R"}]},
    }
    changes.put("A", sent)
    changes.put("B", {**sent, "active": False})
    kept = {k: orjson.dumps(changes.patient(k, lambda local: None)) for k in ("A", "B")}
    sent["name"][0]["family"] = "Other"
    sent["name"].append({"family": "Added"})
    sent["meta"]["security"].clear()
    for local, before in kept.items():
        assert orjson.dumps(changes.patient(local, lambda local: None)) == before
        assert orjson.dumps(changes.latest[local].patient) == before


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


def test_the_list_of_people_is_made_once_per_change_not_once_per_page():
    # a simulator lists up to a million people a page at a time: remaking the whole list
    # for every page made a full-range index build quadratic (found at 909,091 people)
    changes = PatientChanges()
    population = [f"P{i}" for i in range(1000)]
    assert changes.present(population) is population  # nothing changed: no copy at all
    changes.put("NEW-1", {"resourceType": "Patient"})
    changes.delete("P3")
    merged = {"resourceType": "Patient", "active": False}
    merged["link"] = [{"type": "replaced-by", "other": {"reference": "Patient/P5"}}]
    changes.put("P4", merged)
    first = changes.present(population)
    assert changes.present(population) is first  # the next page reuses it
    assert first == [p for p in population if p not in ("P3", "P4")] + ["NEW-1"]
    assert changes.listed(population) == [p for p in population if p != "P3"] + ["NEW-1"]
    changes.delete("P7")  # a change makes the list anew
    assert "P7" not in changes.present(population)


def test_the_acute_record_is_the_person_as_the_epr_holds_them_now():
    """``$everything`` and the per-type reads follow the changes the EPR was told of, as
    its Patient read and listings do: a person registered since start has a record (their
    Patient), a changed one's Patient is the changed one (never a copy kept from before
    the change), and a deleted one has none (404)."""
    from carelink.simulators import acute

    with run_app(acute.create_app(seed=1, size=20, behaviour=Behaviour())) as base:
        fhir = f"{base}/fhir"
        listed = httpx.get(f"{fhir}/Patient", params={"_count": 2}).json()
        first, second = (e["resource"]["id"] for e in listed["entry"][:2])

        def everything(local: str) -> httpx.Response:
            return httpx.get(f"{fhir}/Patient/{local}/$everything")

        def patient_of(answer: httpx.Response) -> dict[str, object]:
            found = [
                e["resource"]
                for e in answer.json()["entry"]
                if e["resource"]["resourceType"] == "Patient"
            ]
            assert len(found) == 1
            return found[0]

        before = everything(first)
        assert before.status_code == 200
        old_family = patient_of(before)["name"][0]["family"]  # type: ignore[index]
        changed = {"resourceType": "Patient", "name": [{"family": "Changedname"}]}
        assert httpx.put(f"{fhir}/Patient/{first}", json=changed).status_code == 200
        after = everything(first)
        assert patient_of(after)["name"] == [{"family": "Changedname"}]
        assert old_family != "Changedname"
        clinical = [e for e in before.json()["entry"] if e["resource"]["resourceType"] != "Patient"]
        assert len(after.json()["entry"]) == len(clinical) + 1  # the rest of the record kept

        new = {"resourceType": "Patient", "name": [{"family": "Newlyregistered"}]}
        assert httpx.put(f"{fhir}/Patient/NEW1", json=new).status_code == 201
        assert patient_of(everything("NEW1"))["name"] == [{"family": "Newlyregistered"}]

        assert httpx.delete(f"{fhir}/Patient/{second}").status_code == 204
        assert everything(second).status_code == 404
        assert httpx.get(f"{fhir}/Condition", params={"patient": second}).json().get("total") == 0
