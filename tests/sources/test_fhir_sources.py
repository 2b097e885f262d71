"""The FHIR-speaking sources: namespacing, references, R4 validity."""

from __future__ import annotations

import copy

import pytest

from carelink.errors import SourceBadPayload
from carelink.simulators import fhir_render
from carelink.simulators.store import PopulationSlice
from carelink.sources.fhir_rest import about_whom, localise
from carelink.sources.namespacing import namespace, namespaced_id
from tests.support.schema import problems


def test_ids_and_references_are_namespaced_and_the_person_points_at_the_merged_patient():
    r = {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": "Patient/123"},
        "encounter": {"reference": "Encounter/e9"},
        "hasMember": [
            {"reference": "Observation/o2"},
            {"reference": "#contained"},
            {"reference": "https://elsewhere.example/Observation/1"},
        ],
    }
    out = namespace(copy.deepcopy(r), "acute", "Patient/123", "Patient/merged")
    assert out["id"] == "acute-o1"
    assert out["meta"]["source"] == "urn:carelink:source:acute"
    assert out["subject"] == {"reference": "Patient/merged"}
    assert out["encounter"] == {"reference": "Encounter/acute-e9"}
    assert [m["reference"] for m in out["hasMember"]] == [
        "Observation/acute-o2",
        "#contained",
        "https://elsewhere.example/Observation/1",
    ]


def test_two_sources_never_produce_the_same_id():
    assert namespaced_id("acute", "1") != namespaced_id("gp", "1")


def test_overlong_or_unsafe_ids_are_hashed_to_a_valid_fhir_id():
    long_id = namespaced_id("social-care", "x" * 80)
    odd_id = namespaced_id("acute", "a/b c")
    for value in (long_id, odd_id):
        assert len(value) <= 64
        assert all(c.isalnum() or c in "-." for c in value)
    assert long_id != namespaced_id("social-care", "x" * 81)


def test_acute_and_gp_records_for_100_people_are_valid_r4_after_localising():
    failures = []
    for source in ("acute", "gp"):
        people = PopulationSlice(source, 4, 400)
        for local in people.local_ids()[:100]:
            rec = fhir_render.record(people.by_local[local], source, local, people.facts(local))
            for r in localise(copy.deepcopy(rec), source, local, "Patient/x", None):
                failures += problems(r)
    assert failures == []


def test_type_filter_keeps_the_patient():
    people = PopulationSlice("gp", 4, 50)
    local = people.local_ids()[0]
    rec = fhir_render.record(people.by_local[local], "gp", local, people.facts(local))
    kept = localise(copy.deepcopy(rec), "gp", local, "Patient/x", frozenset({"Encounter"}))
    assert {r["resourceType"] for r in kept} == {"Patient", "Encounter"}


@pytest.mark.parametrize(
    ("others", "why"),
    [
        ([], "without the Patient"),  # the Patient left out
        ([{"resourceType": "Patient", "id": "p2"}], "different person"),  # another's alone
        (
            [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}],
            "different person",  # theirs and another's: whose would the rest be?
        ),
    ],
)
def test_an_everything_answer_not_about_the_patient_asked_for_is_refused_whole(others, why):
    """A FHIR source's ``$everything`` holds the Patient asked for and no other: any other
    answer is that source's error, so none of it is served as this patient's record."""
    obs = {"resourceType": "Observation", "id": "o1"}
    about_whom([{"resourceType": "Patient", "id": "p1"}, obs], "acute", "p1")  # theirs
    with pytest.raises(SourceBadPayload, match=why):
        about_whom([*others, obs], "acute", "p1")
