"""The GP simulator's STU3 rendering works on copies: the population it serves from is
never changed by a request, so every answer for a person is the same."""

from __future__ import annotations

import orjson

from carelink.simulators.fhir_store import PopulationStore
from carelink.simulators.population import people
from carelink.simulators.stu3_render import RenderedBundles, down, structured_bundle

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _records(n: int) -> list[list[dict]]:
    store = PopulationStore("gp", 5, 60)
    found = (store.find(NHS, p.nhs_number) for p in people(5, 60))
    return [rec for local in found if local and (rec := store.record(local))][:n]


def test_rendering_leaves_the_served_record_as_it_was_and_answers_the_same_again():
    for record in _records(20):
        before = orjson.dumps(record)
        first = orjson.dumps(structured_bundle(record, [], []))
        assert orjson.dumps(record) == before
        assert orjson.dumps(structured_bundle(record, [], [])) == first


def test_a_converted_resource_shares_nothing_with_its_source():
    record = _records(1)[0]
    for r4 in record:
        before = orjson.dumps(r4)
        stu3 = down(r4)
        for value in stu3.values():
            if isinstance(value, dict):
                value["changed"] = True
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                value[0]["changed"] = True
        assert orjson.dumps(r4) == before


def test_a_bundle_is_rendered_once_while_its_resources_are_the_very_same():
    record = _records(1)[0]
    rendered = RenderedBundles()
    first = rendered.bundle(("G1", None), record, [], [])
    assert first == orjson.dumps(structured_bundle(record, [], []))
    assert rendered.bundle(("G1", None), list(record), [], []) is first


def test_a_changed_resource_or_other_warnings_give_a_new_bundle():
    record = _records(1)[0]
    rendered = RenderedBundles()
    first = rendered.bundle(("G1", None), record, [], [])
    renamed = [{**record[0], "name": [{"family": "Changed"}]}, *record[1:]]
    again = rendered.bundle(("G1", None), renamed, [], [])
    assert again == orjson.dumps(structured_bundle(renamed, [], []))
    assert b"Changed" in again
    assert b"Changed" not in first
    warned = [{"resourceType": "OperationOutcome", "id": "w", "issue": []}]
    assert rendered.bundle(("G1", None), renamed, [], warned) == orjson.dumps(
        structured_bundle(renamed, [], warned)
    )
