"""Merging: cross-source duplicates fold, same-source entries stay, provenance repeats."""

from __future__ import annotations

from carelink.federation.fanout import SourceResult
from carelink.federation.merge import merge, provenance
from carelink.federation.references import folded_copies

ALLERGY = {
    "resourceType": "AllergyIntolerance",
    "code": {"text": "penicillin"},
    "patient": {"reference": "Patient/p"},
}


def _res(source: str, rid: str, **extra) -> dict:
    return {**ALLERGY, "id": f"{source}-{rid}", "meta": {"source": f"urn:{source}"}, **extra}


def _ok(source: str, *resources: dict) -> SourceResult:
    return SourceResult(source, "ok", 1.0, tuple(resources), "v1", "2026-01-01T00:00:00Z")


def test_the_same_fact_from_two_sources_is_one_entry_credited_to_both():
    out, contributed = merge([_ok("gp", _res("gp", "1")), _ok("acute", _res("acute", "9"))])
    assert [r["id"] for r in out] == ["gp-1"]
    assert contributed == [["AllergyIntolerance/gp-1"], ["AllergyIntolerance/gp-1"]]


def test_identical_entries_within_one_source_are_both_kept():
    out, _ = merge([_ok("gp", _res("gp", "1"), _res("gp", "2"))])
    assert [r["id"] for r in out] == ["gp-1", "gp-2"]


def test_different_content_is_never_folded():
    out, _ = merge(
        [_ok("gp", _res("gp", "1")), _ok("acute", _res("acute", "9", onsetDateTime="2020-01-01"))]
    )
    assert len(out) == 2


def test_failed_sources_contribute_nothing():
    failed = SourceResult("acute", "timeout", 500.0, reason="slow")
    out, contributed = merge([_ok("gp", _res("gp", "1")), failed])
    assert [r["id"] for r in out] == ["gp-1"]
    assert contributed == [["AllergyIntolerance/gp-1"]]  # the answer of gp alone


def test_two_records_at_one_source_are_each_credited_with_their_own_resources():
    """A person registered twice at one hospital: each answer's contribution is its own
    (each Provenance targets its own record), and nothing of the second answer is taken
    for a folded copy of the first's."""
    first = _ok("acute", _res("acute", "1"))
    second = _ok("acute", _res("acute", "2", code={"text": "latex"}), _res("acute", "3"))
    out, contributed = merge([first, second])
    assert contributed == [
        ["AllergyIntolerance/acute-1"],
        ["AllergyIntolerance/acute-2", "AllergyIntolerance/acute-3"],
    ]
    assert [r["id"] for r in out] == ["acute-1", "acute-2", "acute-3"]
    assert folded_copies([first, second], contributed) == {}


def test_provenance_is_reproducible_for_the_same_data_and_changes_with_it():
    a = provenance("p", _ok("gp"), ["AllergyIntolerance/gp-1"])
    assert a == provenance("p", _ok("gp"), ["AllergyIntolerance/gp-1"])
    changed = SourceResult("gp", "ok", 1.0, (), "v2", "2026-01-01T00:00:00Z")
    assert provenance("p", changed, [])["id"] != a["id"]
    assert a["target"] == [{"reference": "AllergyIntolerance/gp-1"}]
    assert a["recorded"] == "2026-01-01T00:00:00Z"
