"""The Provenance a caller is shown points only at what they were shown."""

from __future__ import annotations

import pytest

from carelink.api.access import provenance_for
from carelink.auth import Principal
from carelink.federation.record import Federated
from carelink.storage import PersonRow

Json = dict

READER = Principal("alice", "R8000", "RXX01", frozenset({"user/*.rs"}), "TREAT")
NO_PROVENANCE = Principal("bob", "R8000", "RXX01", frozenset({"user/Condition.rs"}), "TREAT")
PERSON = PersonRow("p1", None, "D", "O", "d", "o", None, None, None, b"{}", "1")


def _res(rtype: str, rid: str) -> Json:
    return {"resourceType": rtype, "id": rid}


def _prov(pid: str, targets: list[str]) -> Json:
    return {
        "resourceType": "Provenance",
        "id": pid,
        "recorded": "2026-01-01T00:00:00Z",
        "target": [{"reference": t} for t in targets],
    }


#: each Provenance's targets, as ``merge.provenance`` makes them from an answer's
#: contribution (empty: the Provenance names the Patient alone)
TARGETS = {
    "prov-a": ["Patient/acute-9", "Condition/a-1"],  # a source Patient folded away
    "prov-g": ["Condition/g-2"],
    "prov-c": ["Condition/c-3"],  # nothing of it in the record
    "prov-s": [],  # an answer that gave nothing
}


def _record(targets: bool = True) -> Federated:
    """The record, with each Provenance's target references (as ``federate`` hands them
    on) or without (as a record made before them)."""
    resources = [_res("Patient", "p1"), _res("Condition", "a-1"), _res("Condition", "g-2")]
    provs = [_prov(pid, named or ["Patient/p1"]) for pid, named in TARGETS.items()]
    refs = frozenset(f"{r['resourceType']}/{r['id']}" for r in resources)
    named = list(TARGETS.values()) if targets else None
    return Federated(PERSON, (), resources, provs, {}, (), "tag", refs=refs, targets=named)


def _shown_cases(fed: Federated) -> dict[str, list[Json]]:
    patient, acute, gp = fed.resources
    return {
        "the record itself": fed.resources,
        "its objects, another list": list(fed.resources),
        "a labelled copy": [patient, {**acute, "meta": {"security": []}}, gp],
        "one withheld": [patient, gp],
        "nothing but the Patient": [patient],
    }


@pytest.mark.parametrize("targets", [True, False], ids=["targets", "no-targets"])
@pytest.mark.parametrize("case", list(_shown_cases(_record())))
def test_provenance_with_the_record_is_what_it_is_without(case, targets):
    """Handed the record, ``provenance_for`` answers exactly what it answers from the
    resources shown alone, for the record itself, a copy of its list, a labelled copy,
    a resource withheld: no target that was not shown (a source's Patient folded into
    the merged one included), no Provenance with none. Fails when the record's own
    references are taken for what was shown, or a Provenance is handed back whole with
    a target not shown."""
    fed = _record(targets)
    shown = _shown_cases(fed)[case]
    with_record = provenance_for(READER, fed.provenance, shown, fed)
    assert with_record == provenance_for(READER, fed.provenance, shown)
    refs = {f"{r['resourceType']}/{r['id']}" for r in shown}
    for p in with_record:
        assert p["target"]
        assert all(t["reference"] in refs for t in p["target"])


@pytest.mark.parametrize("targets", [True, False], ids=["targets", "no-targets"])
def test_a_provenance_whose_targets_were_all_shown_is_the_records_own_object(targets):
    """Its JSON is then the one the record made once (``Encodings``); one trimmed is a
    copy, and the record's own is left as it was."""
    fed = _record(targets)
    got = provenance_for(READER, fed.provenance, fed.resources, fed)
    assert [p["id"] for p in got] == ["prov-a", "prov-g", "prov-s"]
    assert got[1] is fed.provenance[1]
    assert got[2] is fed.provenance[3]
    assert got[0] is not fed.provenance[0]
    assert [t["reference"] for t in got[0]["target"]] == ["Condition/a-1"]
    assert len(fed.provenance[0]["target"]) == 2


def test_no_provenance_without_a_scope_that_reads_it():
    fed = _record()
    assert provenance_for(NO_PROVENANCE, fed.provenance, fed.resources, fed) == []
