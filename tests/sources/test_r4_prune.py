"""The R4 element walk (``r4_prune.prune``) keeps, repairs and drops exactly what the walk
it replaced did, with the same paths: that walk, as it was, is kept below to compare."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.simulators.fhir_store import PopulationStore
from carelink.sources.r4_prune import (
    _NO_ZONE,
    _NUMBER,
    LOCAL_TIME,
    SCALAR_PARTS,
    is_r4_type,
    prune,
    r4_elements,
)
from carelink.sources.stu3 import to_r4
from tests.support.json_values import json_values

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
RESPONSES = sorted((DATA / "responses").glob("*.json"))


def _walked(value: Any, type_name: str, path: str, dropped: list[str]) -> Any:
    """Keep what R4 has a place for; note the path of everything else."""
    table = r4_elements()
    if isinstance(value, list):
        return [_walked(v, type_name, path, dropped) for v in value]
    if not isinstance(value, dict):
        return _repaired(value, type_name)
    if type_name == "ResourceList":
        rtype = value.get("resourceType")
        if not isinstance(rtype, str) or not is_r4_type(rtype):
            dropped.append(f"{path}: {rtype}")
            return None
        type_name = rtype
    elements = table.get(type_name)
    if elements is None:
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "resourceType" or (key.startswith("_") and key[1:] in elements):
            out[key] = v
        elif key in elements:
            if key in ("extension", "modifierExtension"):
                v = [v] if isinstance(v, dict) else v  # published quirk: not in a list
            elif type_name in SCALAR_PARTS and isinstance(v, list) and len(v) == 1:
                v = v[0]  # published quirk: Duration.code ["d"]
            if isinstance(v, dict | list):
                kept = _walked(v, elements[key], f"{path}.{key}", dropped)
            else:  # a primitive (most elements): no walk, no path
                kept = _repaired(v, elements[key])
            if kept is not None and kept != []:
                out[key] = [x for x in kept if x is not None] if isinstance(kept, list) else kept
        else:
            dropped.append(f"{path}.{key}")
    return out


def _repaired(value: Any, type_name: str) -> Any:
    """Repair the published examples' primitive slips a consumer meets: numbers sent as
    strings, codes and URIs with stray spaces, local times without a zone."""
    if not isinstance(value, str):
        return value
    if type_name in ("decimal", "integer", "positiveInt", "unsignedInt") and _NUMBER.match(
        value.strip()
    ):
        number = float(value) if "." in value else int(value)
        return number
    if type_name in ("code", "uri", "id", "canonical", "oid", "url"):
        return value.strip()
    if type_name in ("dateTime", "instant") and _NO_ZONE.match(value):
        when = datetime.fromisoformat(value).replace(tzinfo=LOCAL_TIME)
        return when.isoformat()
    return value


def _both(resource: Any, type_name: str) -> None:
    walked: list[str] = []
    pruned: list[str] = []
    expected = _walked(copy.deepcopy(resource), type_name, type_name, walked)
    assert prune(copy.deepcopy(resource), type_name, type_name, pruned) == expected
    assert pruned == walked


def test_the_published_responses_prune_as_before():
    """Their STU3 resources as they are (the elements R4 has no place for dropped) and
    as ``to_r4`` leaves them."""
    seen = 0
    for path in RESPONSES:
        for e in json.loads(path.read_text())["entry"]:
            r = e.get("resource", e)
            _both(r, str(r["resourceType"]))
            _both(to_r4(r).resource, str(r["resourceType"]))
            seen += 1
    assert seen > 100


def test_the_gp_simulators_records_prune_as_before():
    store = PopulationStore("gp", 9, 60)
    for local in store.patient_ids():
        for r in store.record(local) or []:
            _both(r, str(r["resourceType"]))


def test_paths_of_dropped_elements_at_depth_and_unknown_contained_types():
    patient = {
        "resourceType": "Patient",
        "id": " p1 ",
        "meta": {"profile": [" http://a ", "http://b"], "tag": [None]},
        "animal": {"species": "dog"},
        "name": [{"family": "Shaw", "period": {"start": "2020-01-01T10:00", "colour": "red"}}],
        "contained": [{"resourceType": "Nonsense"}, {"resourceType": "Practitioner", "x": 1}],
        "_birthDate": {"extension": {"url": "u"}},
        "multipleBirthInteger": "2",
        "extension": {"url": "u", "valueQuantity": {"value": "1.5", "code": ["d"], "odd": 1}},
    }
    dropped: list[str] = []
    out = prune(copy.deepcopy(patient), "Patient", "Patient", dropped)
    assert dropped == [
        "Patient.animal",
        "Patient.name.period.colour",
        "Patient.contained: Nonsense",
        "Patient.contained.x",
        "Patient.extension.valueQuantity.odd",
    ]
    assert out["id"] == "p1"
    assert out["meta"] == {"profile": ["http://a", "http://b"], "tag": []}
    assert out["multipleBirthInteger"] == 2
    assert out["name"][0]["period"]["start"] == "2020-01-01T10:00:00+00:00"
    assert out["extension"] == [{"url": "u", "valueQuantity": {"value": 1.5, "code": "d"}}]
    assert out["contained"] == [{"resourceType": "Practitioner"}]
    _both(patient, "Patient")


_KEYS = sorted(
    {k for elements in r4_elements().values() for k in elements} | {"odd", "_given", "_x"}
)
_JSON = json_values(_KEYS, ["1.5", " a ", "2020-01-02T03:04", "x", "-7", ""], 25)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Patient", "Observation", "MedicationRequest", "Duration", "ResourceList"]),
    st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8),
)
def test_any_shape_prunes_as_before(type_name, resource):
    if type_name == "ResourceList":
        resource = {"resourceType": "Observation", **resource}
    _both(resource, type_name)
