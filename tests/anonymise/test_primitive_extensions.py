"""A primitive's id and extensions (``_birthDate``, ``_given``...) are de-identified
with it (issue #12, finding 1): the walker sees them, a rule on the primitive
takes its companion along, and nothing in them survives a shipped profile
unless a rule keeps it."""

from __future__ import annotations

import copy
import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.rules import load, parse
from carelink.anonymise.walk import walk
from tests.support.shared import SYNTHEA

ROOT = Path(__file__).parents[2]
MASTER = bytes(range(32))
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
OWN_NAME = "http://hl7.org/fhir/StructureDefinition/humanname-own-name"
NICKNAME = "http://example.org/fhir/StructureDefinition/nickname"
NOTE = "http://example.org/fhir/StructureDefinition/onset-note"
FREE_TEXT = "reported by her daughter Mary Whitfield, call 07700 900123"


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1961-04-12",
        "_birthDate": {
            "id": "bt-91x",
            "extension": [{"url": BIRTH_TIME, "valueDateTime": "1961-04-12T09:07:00+01:00"}],
        },
        "name": [
            {
                "family": "Tereshkova-Whitfield",
                "_family": {"extension": [{"url": OWN_NAME, "valueString": "Tereshkova"}]},
                "given": ["Valentina", "Vladimirovna"],
                "_given": [None, {"extension": [{"url": NICKNAME, "valueString": "Valya"}]}],
            }
        ],
    }


def condition() -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2024-03-01T10:30:00Z",
        "_onsetDateTime": {"extension": [{"url": NOTE, "valueString": FREE_TEXT}]},
    }


def engine(rules: list[dict[str, Any]], **params: Any) -> Anonymiser:
    config = parse({"fhirPathRules": rules, "parameters": params})
    return Anonymiser(config, rng=random.Random(1), today=lambda: date(2026, 1, 1))


def companion_values(resource: Any) -> set[str]:
    """Every leaf value inside the resource's ``_x`` elements."""
    found: set[str] = set()

    def leaves(obj: Any) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                leaves(v)
        elif isinstance(obj, list):
            for v in obj:
                leaves(v)
        elif obj is not None:
            found.add(str(obj))

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                (leaves if k.startswith("_") else visit)(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(resource)
    return found


def text(resource: Any) -> str:
    return json.dumps(resource)


def test_the_walker_sees_companions_and_their_extensions():
    nodes = list(walk(patient()))
    extensions = [n for n in nodes if n.type == "Extension"]
    assert {e.value["url"] for e in extensions} == {BIRTH_TIME, OWN_NAME, NICKNAME}
    birth = next(n for n in nodes if n.element == "birthDate")
    assert birth.companion is not None
    assert birth.companion.value["id"] == "bt-91x"
    assert next(n for n in nodes if n.element == "valueDateTime").type == "dateTime"


def test_redacting_every_extension_reaches_the_ones_on_primitives():
    out = engine([{"path": "nodesByType('Extension')", "method": "redact"}]).apply(patient())
    assert out is not None
    assert "_family" not in out["name"][0]
    assert "_given" not in out["name"][0]  # nothing left in it: gone, and given stays whole
    assert out["name"][0]["given"] == ["Valentina", "Vladimirovna"]
    assert out["_birthDate"] == {"id": "bt-91x"}  # the id is not an extension
    assert "Tereshkova" not in text(out).replace("Tereshkova-Whitfield", "")


@pytest.mark.parametrize(
    "rule",
    [
        {"path": "Patient.birthDate", "method": "redact"},
        {"path": "nodesByType('date')", "method": "dateShift"},
        {
            "path": "Patient.birthDate",
            "method": "generalize",
            "cases": {"true": "$this.substring(0, 4)"},
        },
        {"path": "Patient.birthDate", "method": "cryptoHash"},
        {"path": "Patient.birthDate", "method": "substitute", "replaceWith": "1970-01-01"},
    ],
    ids=["redact", "dateShift", "generalize", "cryptoHash", "substitute"],
)
def test_a_rule_on_a_primitive_takes_its_id_and_extensions_with_it(rule):
    out = engine([rule], dateShiftKey="k", enablePartialDatesForRedact=True).apply(patient())
    assert out is not None
    assert "_birthDate" not in out
    assert "09:07" not in text(out)


def test_redacting_a_primitive_with_partial_dates_keeps_the_year_but_not_the_birth_time():
    e = engine(
        [{"path": "Patient.birthDate", "method": "redact"}], enablePartialDatesForRedact=True
    )
    out = e.apply(patient())
    assert out is not None
    assert out["birthDate"] == "1961"
    assert "_birthDate" not in out


def test_keep_keeps_the_companion_and_a_rule_that_kept_extensions_first_wins():
    out = engine([{"path": "Patient.birthDate", "method": "keep"}]).apply(patient())
    assert out is not None
    assert out["_birthDate"] == patient()["_birthDate"]
    kept_first = engine(
        [
            {"path": "nodesByType('Extension')", "method": "keep"},
            {
                "path": "Patient.birthDate",
                "method": "generalize",
                "cases": {"true": "$this.substring(0, 4)"},
            },
        ]
    ).apply(patient())
    assert kept_first is not None
    assert kept_first["birthDate"] == "1961"
    assert kept_first["_birthDate"] == {"extension": patient()["_birthDate"]["extension"]}


def test_a_removed_primitive_takes_even_a_kept_companion_with_it():
    out = engine(
        [
            {"path": "nodesByType('Extension')", "method": "keep"},
            {"path": "Patient.birthDate", "method": "redact"},
        ]
    ).apply(patient())
    assert out is not None
    assert "birthDate" not in out
    assert "_birthDate" not in out


def test_repeating_primitives_stay_aligned_with_their_companions():
    resource = patient()
    resource["name"][0]["_given"] = [
        {"extension": [{"url": NICKNAME, "valueString": "V"}]},
        {"id": "g2"},
    ]
    out = engine([{"path": "nodesByType('Extension')", "method": "redact"}]).apply(resource)
    assert out is not None
    assert out["name"][0]["given"] == ["Valentina", "Vladimirovna"]
    assert out["name"][0]["_given"] == [None, {"id": "g2"}]


def test_a_removed_repeat_takes_its_own_companion_and_no_other():
    resource = patient()
    resource["name"][0]["_given"] = [
        {"id": "g1"},
        {"extension": [{"url": NICKNAME, "valueString": "V"}]},
    ]
    e = engine(
        [
            {"path": "nodesByType('Extension')", "method": "keep"},
            {
                "path": "Patient.name.given",
                "method": "generalize",
                "cases": {"$this = 'Vladimirovna'": "$this"},
                "otherValues": "redact",
            },
        ]
    )
    out = e.apply(resource)
    assert out is not None
    assert out["name"][0]["given"] == ["Vladimirovna"]
    assert out["name"][0]["_given"] == [resource["name"][0]["_given"][1]]


def test_a_companion_without_a_value_is_processed_by_the_rules_on_that_element():
    resource = {
        "resourceType": "Patient",
        "_birthDate": {"extension": [{"url": NOTE, "valueString": FREE_TEXT}]},
        "name": [
            {
                "given": ["A", None],
                "_given": [None, {"extension": [{"url": NOTE, "valueString": "B"}]}],
            }
        ],
    }
    out = engine(
        [
            {"path": "Patient.birthDate", "method": "redact"},
            {"path": "nodesByType('HumanName').given", "method": "redact"},
        ]
    ).apply(resource)
    assert out is not None
    assert set(out) == {"resourceType", "meta"}


def test_free_text_in_an_extension_on_a_date_is_shifted_away_by_the_date_rule():
    out = engine(
        [{"path": "nodesByType('dateTime')", "method": "dateShift"}], dateShiftKey="k"
    ).apply(condition())
    assert out is not None
    assert "_onsetDateTime" not in out
    assert "07700" not in text(out)
    assert "Whitfield" not in text(out)


def test_the_input_keeps_its_companions():
    original = patient()
    snapshot = copy.deepcopy(original)
    engine([{"path": "nodesByType('Extension')", "method": "redact"}]).apply(original)
    assert original == snapshot


# --- the shipped pseudonymised profile ---------------------------------------------------------


def pseudonymised() -> Anonymiser:
    return Anonymiser(
        load(ROOT / "consent" / "deid" / "pseudonymised.json"),
        ProjectKeys.for_project(MASTER, "p"),
        rng=random.Random(1),
    )


def test_no_value_from_a_companion_survives_the_pseudonymised_profile():
    e = pseudonymised()
    for resource in (patient(), condition()):
        secrets = {v for v in companion_values(resource) if len(v) >= 4}
        out = e.apply(resource, person="person-1")
        assert out is not None
        body = text(out)
        assert [s for s in secrets if s in body] == []
        assert not [k for n in walk(out) for k in [n.element] if k.startswith("_")]


def with_companions(r: dict[str, Any]) -> dict[str, Any]:
    """A Synthea resource given the primitive extensions real feeds carry."""
    r = copy.deepcopy(r)
    if r["resourceType"] == "Patient":
        r["_birthDate"] = {
            "extension": [{"url": BIRTH_TIME, "valueDateTime": r["birthDate"] + "T04:05:00Z"}]
        }
        for name in r.get("name", []):
            name["_family"] = {
                "extension": [{"url": OWN_NAME, "valueString": "Own" + name["family"]}]
            }
            name["_given"] = [
                {"extension": [{"url": NICKNAME, "valueString": g + "ie"}]} for g in name["given"]
            ]
    for key in ("onsetDateTime", "recordedDate", "occurrenceDateTime", "authoredOn"):
        if key in r:
            r["_" + key] = {
                "id": "note-" + r["id"],
                "extension": [{"url": NOTE, "valueString": FREE_TEXT}],
            }
    return r


@pytest.mark.skipif(not SYNTHEA.exists(), reason=f"shared Synthea sample not at {SYNTHEA}")
def test_synthea_with_primitive_extensions_keeps_none_of_them_pseudonymised():
    e = pseudonymised()
    done = 0
    for f in ("Patient", "Condition", "Immunization", "MedicationRequest"):
        lines = (SYNTHEA / f"{f}.000.ndjson").read_text().splitlines()
        for line in lines[:60]:
            r = with_companions(json.loads(line))
            secrets = {v for v in companion_values(r) if len(v) >= 4}
            out = e.apply(r, person="person-" + r["id"])
            assert out is not None
            body = text(out)
            assert [s for s in secrets if s in body] == [], r["id"]
            done += 1
    assert done > 150
