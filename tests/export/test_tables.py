"""Flattened, typed Parquet tables and the data dictionary, written in one read."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from carelink.export.tables import DISTINCT_CAP, Output, flatten, to_parquet

OBS = [
    {
        "resourceType": "Observation",
        "id": "a",
        "status": "final",
        "valueQuantity": {"value": 5, "unit": "mmol/L"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    },
    {
        "resourceType": "Observation",
        "id": "b",
        "status": "final",
        "valueQuantity": {"value": 5.5},
        "valueBoolean": True,
        "effectiveDateTime": "2024-05",
    },
    {"resourceType": "Observation", "id": "c", "status": "final", "valueInteger": 3},
    {"resourceType": "Observation", "id": "d", "status": "final", "valueInteger": "n/a"},
]


def written(tmp_path, resources):
    out = Output(tmp_path / "raw", tabulate=True)
    for r in resources:
        out.write(r)
    out.close()
    return out


def test_columns_keep_json_types_and_widen_only_as_far_as_needed(tmp_path):
    out = written(tmp_path, OBS)
    target = tmp_path / "Observation.parquet"
    to_parquet(tmp_path / "raw" / "Observation.ndjson", target, out.columns["Observation"])
    schema = pq.read_schema(target)
    assert str(schema.field("valueQuantity.value").type) == "double"  # 5 and 5.5
    assert str(schema.field("valueBoolean").type) == "bool"
    assert str(schema.field("valueInteger").type) == "string"  # 3 and "n/a"
    assert str(schema.field("effectiveDateTime").type) == "string"  # partial dates stay text
    frame = pd.read_parquet(target)
    assert frame["valueQuantity.value"].iloc[:2].tolist() == [5.0, 5.5]
    assert frame["valueQuantity.value"].iloc[2:].isna().all()
    assert frame["valueInteger"].tolist()[2:] == ["3", "n/a"]
    assert frame["code.coding.0.code"].tolist()[0] == "2345-7"


def test_columns_are_recorded_only_when_tables_are_wanted(tmp_path):
    out = Output(tmp_path / "raw")
    for r in OBS:
        out.write(r)
    out.close()
    assert out.columns == {}
    assert written(tmp_path / "t", OBS).columns["Observation"].kinds["valueBoolean"] == "bool"


def test_the_dictionary_counts_values_and_caps_distinct(tmp_path):
    many = [{"resourceType": "Encounter", "id": f"e{i}", "status": "finished"} for i in range(1500)]
    out = written(tmp_path, many)
    entries = to_parquet(
        tmp_path / "raw" / "Encounter.ndjson", tmp_path / "e.parquet", out.columns["Encounter"]
    )
    by = {e["column"]: e for e in entries}
    assert by["status"] == {
        "table": "Encounter",
        "column": "status",
        "fhirPath": "Encounter.status",
        "type": "str",
        "nonEmpty": 1500,
        "distinct": 1,
    }
    assert by["id"]["distinct"] == f">{DISTINCT_CAP}"


def test_integers_beyond_int64_are_kept_exact_as_text(tmp_path):
    big = [
        {"resourceType": "Basic", "id": "a", "n": 2**63},
        {"resourceType": "Basic", "id": "b", "n": 7},
    ]
    out = written(tmp_path, big)
    target = tmp_path / "b.parquet"
    to_parquet(tmp_path / "raw" / "Basic.ndjson", target, out.columns["Basic"])
    assert pd.read_parquet(target)["n"].tolist() == [str(2**63), "7"]


@pytest.mark.parametrize(
    ("resource", "row"),
    [
        ({"a": {"b": [1, {"c": None}]}}, {"a.b.0": 1}),
        ({"x": [], "y": False}, {"y": False}),
    ],
)
def test_flatten(resource, row):
    assert flatten(resource) == row
