"""A rebuild points every person id it retires on, as an update does.

Invariant: every person id the index held before a rebuild either is in the new
index, holding what is left of the same records, or leads (``IndexStore.successors``)
to exactly the new people its records went to; an id whose records are all gone
leads nowhere (unknown, as before). Ids of people whose records did not change stay.
"""

from __future__ import annotations

from hypothesis import given, settings

from carelink.federation.changes import apply_changes
from carelink.federation.read import retired_patient
from carelink.storage import IndexStore
from tests.federation.test_build import _store
from tests.federation.test_update_is_rebuild import (
    NOW,
    NUMBERS,
    ROOMY,
    _anna,
    build,
    record,
    scenarios,
)


def _owners(store: IndexStore) -> dict[str, set[tuple[str, str]]]:
    return {
        p.id: {(lk.source, lk.local_id) for lk in store.links_of(p.id)} for p in store.each_person()
    }


def _holder(owners: dict[str, set[tuple[str, str]]]) -> dict[tuple[str, str], str]:
    return {r: pid for pid, rs in owners.items() for r in rs}


@settings(max_examples=60, **ROOMY)
@given(case=scenarios())
def test_every_id_a_rebuild_retires_leads_to_where_its_records_went(tmp_path_factory, case):
    before, _, after = case
    store = _store(str(tmp_path_factory.mktemp("retire") / "index.db"))
    build(store, before)
    old = _owners(store)
    build(store, after)
    new = _owners(store)
    holder = _holder(new)
    for pid, records in old.items():
        went = sorted({holder[r] for r in records if r in holder})
        if pid in new:
            assert store.successors(pid) == []  # live: not retired
            continue
        assert store.successors(pid) == went
    was = {frozenset(rs): pid for pid, rs in old.items()}
    for pid, records in new.items():  # people whose records did not change keep their id
        if all(before.get(r) == after[r] for r in records) and frozenset(records) in was:
            assert pid == was[frozenset(records)]
    store.db.dispose()


@settings(max_examples=40, **ROOMY)
@given(case=scenarios())
def test_ids_retired_by_updates_then_a_rebuild_lead_to_live_people_holding_their_records(
    tmp_path_factory, case
):
    """Every id ever answered with, through an update and then a rebuild: live, or leads
    only to live people, among them every live holder of a record it held (a record
    merged away at its source is followed by the record it was merged into only when
    the update saw the merge)."""
    before, changes, after = case
    store = _store(str(tmp_path_factory.mktemp("chain") / "index.db"))
    build(store, before)
    first = _owners(store)
    apply_changes(store, changes, now=lambda: NOW)
    second = _owners(store)
    build(store, after)
    final = _owners(store)
    holder = _holder(final)
    for pid, records in [*first.items(), *second.items()]:
        if pid in final:
            continue
        led = store.successors(pid)
        assert set(led) <= set(final)
        assert {holder[r] for r in records if r in holder} <= set(led)
    store.db.dispose()


def test_a_record_that_comes_to_match_after_a_rebuild_leaves_its_old_id_pointing_on(
    database_url,
):
    """A social-care record without a number, unlike the GP's Anna, then corrected at its
    source to match her: the rebuild joins them under her id; the record's old id reads
    as an inactive Patient ``replaced-by`` hers, not as unknown."""
    gp = record("gp", "g1", {**_anna(), "nhs": NUMBERS[0]})
    social = record("social-care", "s1", {**_anna(), "family": "Patel", "postcode": "DT1 2XY"})
    store = _store(database_url)
    build(store, {("gp", "g1"): gp, ("social-care", "s1"): social})
    alone = store.owners([("social-care", "s1")])[("social-care", "s1")]
    anna = store.owners([("gp", "g1")])[("gp", "g1")]
    assert alone != anna
    corrected = record("social-care", "s1", _anna())
    report = build(store, {("gp", "g1"): gp, ("social-care", "s1"): corrected})
    assert report.successors == 1
    assert store.owners([("social-care", "s1")])[("social-care", "s1")] == anna
    assert store.person(alone) is None
    assert store.successors(alone) == [anna]
    patient = retired_patient(store, alone)
    assert patient is not None
    assert patient["active"] is False
    assert patient["link"] == [{"other": {"reference": f"Patient/{anna}"}, "type": "replaced-by"}]
    # and split again by the next rebuild: the id comes back, no longer retired
    build(store, {("gp", "g1"): gp, ("social-care", "s1"): social})
    assert store.person(alone) is not None
    assert store.successors(alone) == []
    assert retired_patient(store, alone) is None
    store.db.dispose()
