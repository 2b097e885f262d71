"""``to_r4`` on a caller's own dict converts it in place to the same R4 a copy gives,
and the simulator sends as they are only the resources its STU3 rendering leaves alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pytest

from carelink.simulators.fhir_store import PopulationStore
from carelink.simulators.stu3_render import down, sent_as_is
from carelink.sources.stu3 import RENAMED_TYPES, to_r4

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
RESPONSES = sorted((DATA / "responses").glob("*.json"))


def _resources(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    return [e.get("resource", e) for e in doc["entry"]]


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
def test_an_owned_resource_converts_to_what_a_copy_converts_to(path: Path):
    for r in _resources(path):
        before = copy.deepcopy(r)
        converted = to_r4(r)
        assert r == before  # not owned: left as it was
        owned = to_r4(copy.deepcopy(r), owned=True)
        assert owned.resource == converted.resource
        assert owned.dropped == converted.dropped
        text = orjson.dumps(converted.resource)
        assert not any(f'"{old}/'.encode() in text for old in RENAMED_TYPES)


def test_the_published_responses_refer_to_renamed_types():
    """So the test above sees references rewritten (``ProcedureRequest/..``)."""
    text = b"".join(p.read_bytes() for p in RESPONSES)
    assert all(f'"{old}/'.encode() in text for old in RENAMED_TYPES)


def test_what_the_simulator_sends_as_it_is_its_stu3_rendering_would_not_change():
    store = PopulationStore("gp", 9, 60)
    records = [store.record(local) or [] for local in store.patient_ids()]
    resources = [r for record in records for r in record]
    assert {r["resourceType"] for r in resources} >= {"Patient", "Condition", "Observation"}
    as_is = [r for r in resources if sent_as_is(r)]
    assert "Patient" in {r["resourceType"] for r in as_is}
    for r in as_is:
        assert down(r) == r
