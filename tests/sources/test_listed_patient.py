"""``listed_patient`` (a practice list's Patient as R4, without the element walk when it is
already R4) gives exactly what the general converter gives: the same R4, keys in the same
order, for the simulator's Patients, the published examples' resources and Patients
changed at random; and ``kept_whole`` says a value is kept only when the walk keeps it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.simulators.fhir_store import PopulationStore
from carelink.simulators.stu3_render import down, sent_as_is
from carelink.sources.r4_prune import kept_whole, prune, r4_elements
from carelink.sources.stu3 import listed_patient, to_r4
from tests.support.json_values import json_values

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
RESPONSES = sorted((DATA / "responses").glob("*.json"))


def _sent(seed: int, size: int) -> list[dict[str, Any]]:
    """The Patients the GP simulator's listing sends (STU3, as ``GET /Patient`` renders)."""
    store = PopulationStore("gp", seed, size)
    found = [store.patient(local) for local in store.patient_ids()]
    return [p if sent_as_is(p) else down(p) for p in found if p is not None]


SIMULATED = _sent(42, 400)


def _same(stu3: dict[str, Any]) -> dict[str, Any]:
    """``listed_patient``'s R4 for ``stu3``, checked against the general converter's (the
    same values and the same key order, or the same error); the result."""
    try:
        general = to_r4(copy.deepcopy(stu3), owned=True).resource
    except Exception as e:  # what it cannot convert (no resourceType ...)
        with pytest.raises(type(e)):
            listed_patient(copy.deepcopy(stu3))
        return {}
    listed = listed_patient(copy.deepcopy(stu3))
    assert listed == general
    assert json.dumps(listed) == json.dumps(general)  # key order too
    return listed


def test_the_simulators_patients_convert_as_the_general_converter_converts_them():
    assert len(SIMULATED) > 300
    for p in SIMULATED:
        _same(p)


def test_the_simulators_patients_are_kept_as_they_are_without_the_walk():
    """The point of ``listed_patient``: the dict it was given, not a rebuilt one."""
    kept = 0
    for p in SIMULATED:
        mine = copy.deepcopy(p)
        kept += listed_patient(mine) is mine
    assert kept == len(SIMULATED)


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
def test_the_published_resources_convert_as_the_general_converter_converts_them(path: Path):
    """Their Patients (with STU3 profiles, extensions and quirks) and, through the
    general converter, every other resource too."""
    for e in json.loads(path.read_text())["entry"]:
        _same(e.get("resource", e))


def test_the_published_patients_with_their_profiles_are_kept_without_the_walk():
    patients = [
        e["resource"]
        for path in RESPONSES
        for e in json.loads(path.read_text())["entry"]
        if e.get("resource", {}).get("resourceType") == "Patient"
        and "profile" in e["resource"].get("meta", {})
    ]
    assert len(patients) > 10
    for p in map(copy.deepcopy, patients):
        assert listed_patient(p) is p
        assert "profile" not in p.get("meta", {})


def test_what_the_general_converter_changes_is_changed():
    patient = {
        "resourceType": "Patient",
        "id": "Patient/p1",
        "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/CareConnect"]},
        "animal": {"species": {"text": "dog"}},
        "generalPractitioner": {"reference": "ReferralRequest/r1"},
        "name": [{"family": "Shaw", "period": {"start": "2020-01-01T10:00"}}],
        "identifier": [{"system": " https://fhir.nhs.uk/Id/nhs-number ", "value": "01"}],
        "multipleBirthInteger": "2",
        "extension": {"url": "https://carelink.example/x", "valueString": "not listed"},
        "odd": 1,
    }
    out = _same(patient)
    assert out["id"] == "p1"
    assert not {"meta", "animal", "odd"} & set(out)
    assert out["generalPractitioner"] == [{"reference": "ServiceRequest/r1"}]
    assert out["name"][0]["period"]["start"] == "2020-01-01T10:00:00+00:00"
    assert out["identifier"][0]["system"] == "https://fhir.nhs.uk/Id/nhs-number"
    assert out["multipleBirthInteger"] == 2
    assert out["extension"] == [patient["extension"]]
    for key, value in patient.items():  # each change alone
        if key != "resourceType":
            assert _same({**SIMULATED[0], key: value}) != {**SIMULATED[0], key: value}
    for contained in ([{"resourceType": "Organization", "id": "o"}], []):
        _same({**SIMULATED[0], "contained": contained})
    _same({**SIMULATED[0], "_birthDate": {"extension": [{"url": "u", "valueString": "x"}]}})


_KEYS = sorted(
    {
        k
        for t in ("Patient", "Identifier", "HumanName", "Address", "Extension")
        for k in r4_elements()[t]
    }
    | {"odd", "_given", "profile", "animal", "contained", "reference", "resourceType"}
)
_TEXTS = ["1.5", " a ", "a\n", "2020-01-02T03:04", "2020-01-02T03:04:05Z", "x", "-7", ""]
_VALUE = json_values(
    _KEYS, [*_TEXTS, "ProcedureRequest/1", "ReferralRequest/r", "Patient/p", "Organization/o"], 10
)


def _children(node: Any) -> list[Any]:
    pairs = node.items() if isinstance(node, dict) else enumerate(node)
    return [k for k, v in pairs if isinstance(v, dict | list)]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_patient_changed_anywhere_converts_as_the_general_converter_converts_it(data):
    """A simulator Patient with one to three changes somewhere inside it: a value set to
    another (a stray space, a time without a zone, a number as text, None, a reference to
    a renamed type ...), an element removed, a value listed or unlisted."""
    patient = copy.deepcopy(data.draw(st.sampled_from(SIMULATED)))
    for _ in range(data.draw(st.integers(1, 3))):
        node: Any = patient
        while _children(node) and data.draw(st.booleans()):
            node = node[data.draw(st.sampled_from(_children(node)))]
        if isinstance(node, list):
            if node and data.draw(st.booleans()):
                node[data.draw(st.integers(0, len(node) - 1))] = data.draw(_VALUE)
            else:
                node.append(data.draw(_VALUE))
            continue
        mine = sorted(node) if node and data.draw(st.integers(0, 4)) else _KEYS  # mostly its own
        key = data.draw(st.sampled_from(mine))
        how = data.draw(st.sampled_from(["set", "remove", "list", "unlist", "pad", "local"]))
        if how == "pad" and isinstance(node.get(key), str):
            node[key] = data.draw(st.sampled_from([" ", "\n", "\t"])) + node[key]
        elif how == "local":
            node[key] = data.draw(st.sampled_from(["2020-01-02T03:04", "2020-01-02T03:04:05.5"]))
        elif how == "set" or key not in node:
            node[key] = data.draw(_VALUE)
        elif how == "remove":
            del node[key]
        elif how == "list":
            node[key] = [node[key]]
        elif isinstance(node[key], list) and node[key]:
            node[key] = node[key][0]
    _same(patient)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Patient", "HumanName", "Identifier", "Extension", "Quantity", "Meta"]),
    st.dictionaries(
        st.sampled_from([*_KEYS, "value", "code", "unit", "lastUpdated"]), _VALUE, max_size=6
    ),
)
def test_kept_whole_only_when_the_walk_keeps_it_as_it_is(type_name, value):
    dropped: list[str] = []
    if kept_whole(value, type_name):
        assert prune(copy.deepcopy(value), type_name, type_name, dropped) == value
        assert dropped == []
