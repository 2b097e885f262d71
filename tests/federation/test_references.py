"""Resolving references across the sources of one merged record."""

from __future__ import annotations

import copy

from carelink.federation.fanout import OK, SourceResult
from carelink.federation.merge import merge
from carelink.federation.references import folded_copies, resolve, unsettled

SOURCES = ["acute", "gp", "social-care"]
NPI = "http://hl7.org/fhir/sid/us-npi"


def _rec(*resources: dict) -> list[dict]:
    return [{"resourceType": "Patient", "id": "p"}, *resources]


def test_a_reference_to_a_resource_in_the_record_stays():
    record = _rec(
        {"resourceType": "Encounter", "id": "gp-1"},
        {"resourceType": "Condition", "id": "gp-2", "encounter": {"reference": "Encounter/gp-1"}},
    )
    out = resolve(record, {}, SOURCES)
    assert all(a is b for a, b in zip(out, record, strict=True))  # nothing copied


def test_a_reference_to_another_sources_copy_of_the_local_id_points_there():
    record = _rec(
        {"resourceType": "Encounter", "id": "acute-1"},
        {"resourceType": "Condition", "id": "gp-2", "encounter": {"reference": "Encounter/gp-1"}},
    )
    before = copy.deepcopy(record)
    out = resolve(record, {}, SOURCES)
    assert out[2]["encounter"] == {"reference": "Encounter/acute-1"}
    assert record == before  # the sources' (cached) answers are never changed


def test_a_source_name_with_a_hyphen_is_read_whole():
    record = _rec(
        {"resourceType": "Encounter", "id": "gp-1"},
        {"resourceType": "Flag", "id": "x", "encounter": {"reference": "Encounter/social-care-1"}},
    )
    assert resolve(record, {}, SOURCES)[2]["encounter"]["reference"] == "Encounter/gp-1"


def test_a_reference_nobody_holds_is_left_alone():
    record = _rec(
        {"resourceType": "Condition", "id": "gp-2", "encounter": {"reference": "Encounter/gp-9"}}
    )
    assert resolve(record, {}, SOURCES)[1]["encounter"]["reference"] == "Encounter/gp-9"


def test_a_reference_to_a_folded_copy_points_at_the_kept_copy():
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Ng"}]}
    acute = SourceResult("acute", OK, 1.0, ({**practitioner, "id": "acute-dr"},))
    gp = SourceResult(
        "gp",
        OK,
        1.0,
        (
            {**practitioner, "id": "gp-doc"},
            {
                "resourceType": "Encounter",
                "id": "gp-1",
                "participant": [{"individual": {"reference": "Practitioner/gp-doc"}}],
            },
        ),
    )
    merged, contributed = merge([acute, gp])
    folded = folded_copies([acute, gp], contributed)
    assert folded == {"Practitioner/gp-doc": "Practitioner/acute-dr"}
    out = resolve(_rec(*merged), folded, SOURCES)
    encounter = next(r for r in out if r["resourceType"] == "Encounter")
    assert encounter["participant"][0]["individual"]["reference"] == "Practitioner/acute-dr"


def test_conditional_and_logical_references_resolve_to_the_resource_with_the_identifier():
    doctor = {
        "resourceType": "Practitioner",
        "id": "acute-dr",
        "identifier": [{"system": NPI, "value": "99"}],
    }
    record = _rec(
        doctor,
        {
            "resourceType": "Encounter",
            "id": "acute-1",
            "participant": [
                {"individual": {"reference": f"Practitioner?identifier={NPI}|99", "display": "Dr"}},
                {"individual": {"reference": "Practitioner?identifier=99"}},
                {"individual": {"reference": f"Practitioner?identifier={NPI}|00"}},
            ],
        },
        {
            "resourceType": "PractitionerRole",
            "id": "acute-role",
            "practitioner": {"identifier": {"system": NPI, "value": "99"}},
            "organization": {"identifier": {"system": NPI, "value": "99"}, "type": "Organization"},
        },
    )
    out = resolve(record, {}, SOURCES)
    individuals = [p["individual"] for p in out[2]["participant"]]
    assert individuals == [
        {"reference": "Practitioner/acute-dr", "display": "Dr"},
        {"reference": "Practitioner/acute-dr"},
        {"reference": f"Practitioner?identifier={NPI}|00"},  # nobody has it: left as it was
    ]
    role = out[3]
    assert role["practitioner"] == {
        "identifier": {"system": NPI, "value": "99"},
        "reference": "Practitioner/acute-dr",
    }
    assert "reference" not in role["organization"]  # a Practitioner is not an Organization


def test_a_reference_is_settled_by_the_record_or_by_what_was_seen_before():
    record = _rec(
        {"resourceType": "Condition", "id": "gp-2", "encounter": {"reference": "Encounter/gp-1"}},
        {"resourceType": "Condition", "id": "gp-3", "encounter": {"reference": "Encounter/gp-5"}},
        {
            "resourceType": "Condition",
            "id": "gp-4",
            "evidence": [{"detail": [{"reference": "Condition/gp-2"}]}],
        },
    )
    assert unsettled(record, {}, SOURCES) == {"Encounter/gp-1", "Encounter/gp-5"}
    seen = {"Encounter/acute-1", "Encounter/gp-5"}
    assert unsettled(record, {}, SOURCES, seen) == set()
    out = resolve(record, {}, SOURCES, known=seen)
    assert [r.get("encounter") for r in out[1:3]] == [
        {"reference": "Encounter/acute-1"},
        {"reference": "Encounter/gp-5"},
    ]


def test_context_resources_are_targets_but_not_output():
    record = _rec(
        {"resourceType": "Condition", "id": "gp-2", "encounter": {"reference": "Encounter/gp-1"}}
    )
    context = [{"resourceType": "Encounter", "id": "acute-1"}]
    out = resolve(record, {}, SOURCES, context=context)
    assert len(out) == 2
    assert out[1]["encounter"]["reference"] == "Encounter/acute-1"
