"""The pseudonymised profile after issue #12 (findings 2 and 3): free text never
leaves, the birth date is only a year, the per-person shift has a floor,
per-event jitter is keyed and repeatable, and lab values can be perturbed."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from carelink.anonymise.engine import FREE_TEXT, FREE_TEXT_KEEP, Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.methods import QUANTITIES
from carelink.anonymise.rules import load, parse
from carelink.anonymise.walk import walk
from carelink.errors import ConfigError
from carelink.fhir.jsonio import read_config
from tests.support.shared import SYNTHEA

ROOT = Path(__file__).parents[2]
PROFILE = ROOT / "consent" / "deid" / "pseudonymised.json"
MASTER = bytes(range(32))
SECRET = "Mrs Joan Whitfield rang on 07700 900123"


def profile(**changes: Any) -> dict[str, Any]:
    document, _ = read_config(PROFILE, "profile")
    document["parameters"].update(changes)
    return dict(document)


def pseudonymiser(document: dict[str, Any] | None = None) -> Anonymiser:
    config = parse(document) if document is not None else load(PROFILE)
    return Anonymiser(config, ProjectKeys.for_project(MASTER, "study"), random.Random(7))


def concept(text: str) -> dict[str, Any]:
    return {
        "coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}],
        "text": text,
    }


FREE_TEXT_RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "CarePlan",
        "id": "cp",
        "status": "active",
        "intent": "plan",
        "title": SECRET,
        "description": SECRET,
        "subject": {"reference": "Patient/p"},
        "activity": [
            {"detail": {"status": "scheduled", "description": SECRET, "code": concept(SECRET)}}
        ],
        "note": [{"text": SECRET, "authorString": SECRET}],
    },
    {
        "resourceType": "ClinicalImpression",
        "id": "ci",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        "description": SECRET,
        "summary": SECRET,
    },
    {
        "resourceType": "MedicationRequest",
        "id": "mr",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": concept(SECRET),
        "dosageInstruction": [
            {
                "text": SECRET,
                "patientInstruction": SECRET,
                "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablet"}}],
            }
        ],
    },
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": concept(SECRET),
        "subject": {"reference": "Patient/p"},
        "valueString": SECRET,
        "component": [{"code": concept(SECRET), "valueQuantity": {"value": 7.1, "unit": "mmol/L"}}],
    },
    {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/p"},
        "code": concept(SECRET),
        "note": [{"text": SECRET}],
        "evidence": [{"detail": [{"reference": "Observation/o1", "display": SECRET}]}],
    },
]


def leftover_text(resource: dict[str, Any]) -> list[str]:
    """Paths of string, markdown or xhtml values outside the keep list."""
    out = []
    for n in walk(resource):
        if n.type in FREE_TEXT and n.value is not None:
            parent = "Quantity" if n.parent_type in QUANTITIES else n.parent_type
            if f"{parent}.{n.element}" not in FREE_TEXT_KEEP:
                out.append(n.path)
    return out


@pytest.mark.parametrize("resource", FREE_TEXT_RESOURCES, ids=lambda r: r["resourceType"])
def test_free_text_never_leaves_a_pseudonymised_extract(resource):
    out = pseudonymiser().apply(resource, person="p")
    assert out is not None
    assert "Whitfield" not in json.dumps(out)
    assert "07700" not in json.dumps(out)
    assert leftover_text(out) == []
    assert out["status"] if "status" in resource else True  # coded elements are not text


def test_what_is_not_free_text_stays():
    out = pseudonymiser().apply(FREE_TEXT_RESOURCES[3], person="p")
    assert out is not None
    assert out["code"]["coding"][0]["display"] == "Diabetes"
    assert out["component"][0]["valueQuantity"]["unit"] == "mmol/L"
    patient = pseudonymiser().apply(
        {
            "resourceType": "Patient",
            "gender": "female",
            "address": [
                {"line": ["1 Mill Lane"], "city": "Leeds", "postalCode": "LS1 4AP", "country": "GB"}
            ],
        },
        person="p",
    )
    assert patient is not None
    assert patient["gender"] == "female"
    assert patient["address"] == [{"postalCode": "LS1 4", "country": "GB"}]


def test_the_keep_list_can_be_extended_and_free_text_can_stay_when_asked():
    document = profile(freeTextKeep=["CarePlan.title"])
    out = pseudonymiser(document).apply(FREE_TEXT_RESOURCES[0], person="p")
    assert out is not None
    assert out["title"] == SECRET
    assert "description" not in out
    kept = pseudonymiser(profile(freeText="keep")).apply(FREE_TEXT_RESOURCES[1], person="p")
    assert kept is not None
    assert kept["summary"] == SECRET


@pytest.mark.skipif(not SYNTHEA.exists(), reason=f"shared Synthea sample not at {SYNTHEA}")
def test_synthea_through_the_pseudonymised_profile_keeps_no_free_text():
    e = pseudonymiser()
    seen = 0
    for f in sorted(SYNTHEA.glob("*.ndjson")):
        for line in f.read_text().splitlines()[:40]:
            r = json.loads(line)
            out = e.apply(r, person="p-" + r["id"])
            assert out is not None
            assert leftover_text(out) == [], (r["resourceType"], r["id"])
            seen += 1
    assert seen > 400


# --- dates -------------------------------------------------------------------------------------


def test_the_birth_date_is_generalised_to_the_year_not_shifted():
    out = pseudonymiser().apply(
        {"resourceType": "Patient", "birthDate": "1961-04-12", "deceasedDateTime": "2020-01-05"},
        person="p",
    )
    assert out is not None
    assert out["birthDate"] == "1961"
    assert out["deceasedDateTime"] != "2020-01-05"  # other dates are still shifted


def test_no_per_person_shift_is_under_the_minimum():
    keys = ProjectKeys.for_project(MASTER, "study")
    shifts = [keys.shift_days(f"person-{i}", 180, 14) for i in range(4000)]
    assert all(14 <= abs(s) <= 180 for s in shifts)
    assert {min(shifts), max(shifts)} == {-180, 180}
    assert {s for s in shifts if abs(s) < 20} == {
        -19,
        -18,
        -17,
        -16,
        -15,
        -14,
        14,
        15,
        16,
        17,
        18,
        19,
    }
    negative = sum(s < 0 for s in shifts)
    assert 1800 < negative < 2200


def test_a_minimum_of_one_gives_the_shifts_earlier_releases_gave():
    keys = ProjectKeys.for_project(MASTER, "study")
    assert [keys.shift_days(f"p{i}", 180) for i in range(200)] == [
        keys.shift_days(f"p{i}", 180, 1) for i in range(200)
    ]
    assert keys.shift_days("p0", 180) == keys.shift_days("p0", 180, min_days=1)


def test_the_pseudonymised_profile_shifts_everyone_by_at_least_two_weeks():
    e = pseudonymiser()
    for i in range(300):
        out = e.apply({"resourceType": "Condition", "recordedDate": "2024-06-15"}, person=f"p{i}")
        assert out is not None
        moved = (date.fromisoformat(out["recordedDate"]) - date(2024, 6, 15)).days
        assert 14 <= abs(moved) <= 180


def test_per_event_jitter_is_keyed_bounded_and_repeatable():
    document = profile(dateJitterDays=3)
    e = pseudonymiser(document)
    base = ProjectKeys.for_project(MASTER, "study").shift_days("p", 180, 14)
    events = [
        {
            "resourceType": "Encounter",
            "id": f"e{i}",
            "period": {"start": "2024-06-15", "end": "2024-06-20"},
        }
        for i in range(40)
    ]
    outs = [e.apply(ev, person="p") for ev in events]
    offsets = set()
    for out in outs:
        assert out is not None
        start = date.fromisoformat(out["period"]["start"])
        end = date.fromisoformat(out["period"]["end"])
        assert (end - start).days == 5  # one event's dates move together
        offsets.add((start - date(2024, 6, 15)).days - base)
    assert offsets <= set(range(-3, 4))
    assert len(offsets) > 3
    again = [pseudonymiser(document).apply(ev, person="p") for ev in events]
    assert json.dumps(again) == json.dumps(outs)  # reruns are byte-identical
    plain = pseudonymiser().apply(events[0], person="p")
    assert plain is not None
    assert (date.fromisoformat(plain["period"]["start"]) - date(2024, 6, 15)).days == base


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"dateShiftScope": "resource", "dateJitterDays": 2}, "needs dateShiftScope person"),
        ({"dateShiftScope": "person", "dateShiftMinimum": 200, "dateShiftRange": 180}, "between 1"),
        ({"dateShiftScope": "person", "dateJitterDays": -1}, "negative"),
        ({"dateShiftScope": "person", "dateShiftMinimum": 1.5}, "whole number"),
        ({"freeText": "blank"}, "freeText"),
        ({"freeTextKeep": "Coding.display"}, "freeTextKeep"),
    ],
)
def test_bad_date_and_free_text_parameters_are_refused(parameters, message):
    with pytest.raises(ConfigError, match=message):
        parse({"fhirPathRules": [], "parameters": parameters})


def test_a_pseudonymised_configuration_can_perturb_lab_values():
    document = profile()
    document["fhirPathRules"].insert(
        0,
        {
            "path": "nodesByType('Quantity')",
            "method": "perturb",
            "span": 0.1,
            "rangeType": "proportional",
        },
    )
    e = pseudonymiser(document)
    values = []
    for i in range(30):
        out = e.apply(
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "valueQuantity": {"value": 80.0, "unit": "kg"},
            },
            person="p",
        )
        assert out is not None
        values.append(out["valueQuantity"]["value"])
        assert out["valueQuantity"]["unit"] == "kg"
    assert all(76 <= v <= 84 for v in values)
    assert len(set(values)) > 10
    assert 80.0 not in values
