"""An update skips the blocks a build skips: those the population fills past the cap.

Invariant: after any changes, the live index holds the people a rebuild from the same
sources gives, when a blocking key is shared by more than ``BLOCK_CAP`` records, or
the changes take a block across the cap in either direction.

The population: Kate Carter at the hospital without an NHS number, and Cate Karter at
her practice with one. Their names differ in sound and initial, so the only blocking
key they share is postcode + birth date (``pd``); they score well above the match
threshold on it. Fillers at the practice share that postcode and birth date, day and
month the other way round (and nothing else with Kate), so the ``pd`` block holds
exactly as many records as the test puts in it; they score below the review threshold
with her, so nothing but the block's size ties them to her and Cate.
"""

from __future__ import annotations

from carelink.federation.changes import Change, Remove, Upsert, apply_changes
from carelink.federation.linkage import record_keys
from carelink.federation.matching import (
    BLOCK_CAP,
    MATCH_THRESHOLD,
    REVIEW_THRESHOLD,
    Demographics,
    score,
)
from carelink.sources.base import SourcePerson
from carelink.storage import IndexStore
from tests.federation.test_build import _store
from tests.federation.test_changes import snapshot
from tests.federation.test_update_is_rebuild import NOW, _number, build, record

BORN, POSTCODE = "1950-03-04", "BH1 1AA"
KEY = "pd:BH11AA:1950:0304"

Records = dict[tuple[str, str], SourcePerson]


def _kate() -> SourcePerson:
    d = {"given": "Kate", "family": "Carter", "birth_date": BORN, "postcode": POSTCODE}
    return record("acute", "kate", {**d, "gender": "female", "nhs": None})


def _cate() -> SourcePerson:
    d = {"given": "Cate", "family": "Karter", "birth_date": BORN, "postcode": POSTCODE}
    return record("gp", "cate", {**d, "gender": "female", "nhs": _number(1)})


def _filler(n: int) -> SourcePerson:
    """A practice's patient in Kate's ``pd`` block only: other names, the other sex."""
    letters = "BDFGHLMNPRSTVWZ"
    family = "Mo" + letters[n % 15].lower() + letters[n // 15 % 15].lower() + "ow"
    d = {"given": "Zed", "family": family, "birth_date": "1950-04-03", "postcode": POSTCODE}
    return record("gp", f"f{n}", {**d, "gender": "male", "nhs": _number(1000 + n)})


def _population(fillers: int) -> Records:
    out = {("acute", "kate"): _kate(), ("gp", "cate"): _cate()}
    out.update({("gp", f"f{n}"): _filler(n) for n in range(fillers)})
    return out


def _together(store: IndexStore) -> bool:
    owners = store.owners([("acute", "kate"), ("gp", "cate")])
    return owners[("acute", "kate")] == owners[("gp", "cate")]


def test_the_population_is_what_the_tests_need():
    kate, cate = _kate(), _cate()
    assert record_keys(kate) & record_keys(cate) == {KEY}
    pair = Demographics(kate.given, kate.family, kate.birth_date, kate.gender, kate.postcode)
    other = Demographics(cate.given, cate.family, cate.birth_date, cate.gender, cate.postcode)
    assert score(pair, other).total >= MATCH_THRESHOLD
    for n in range(BLOCK_CAP + 1):
        filler = _filler(n)
        assert record_keys(filler) & record_keys(kate) == {KEY}
        theirs = Demographics(
            filler.given, filler.family, filler.birth_date, filler.gender, filler.postcode
        )
        assert score(pair, theirs).total < REVIEW_THRESHOLD


def _update_equals_rebuild(tmp_path, before: Records, changes: list[Change], after: Records):
    live = _store(str(tmp_path / "live.db"))
    build(live, before)
    apply_changes(live, changes, now=lambda: NOW)
    fresh = _store(str(tmp_path / "fresh.db"))
    build(fresh, after)
    try:
        assert snapshot(live) == snapshot(fresh)
        return _together(live)
    finally:
        live.db.dispose()
        fresh.db.dispose()


def test_an_upsert_that_fills_a_block_past_the_cap_unlinks_as_a_rebuild_does(tmp_path):
    """The block at the cap links Kate with Cate; one more record in it and a build skips
    it, so they are two people, in the update as in the rebuild."""
    before = _population(BLOCK_CAP - 2)
    extra = _filler(BLOCK_CAP)
    after = {**before, ("gp", extra.local_id): extra}
    together = _update_equals_rebuild(tmp_path, before, [Upsert(extra)], after)
    assert not together


def test_an_upsert_of_a_record_in_a_block_over_the_cap_links_nothing_through_it(tmp_path):
    """Kate arrives (or changes) while the block is over the cap: the rebuild never pairs
    her with Cate through it, nor does the update."""
    base = _population(BLOCK_CAP)
    before = {k: v for k, v in base.items() if k != ("acute", "kate")}
    together = _update_equals_rebuild(tmp_path, before, [Upsert(_kate())], base)
    assert not together


def test_a_removal_that_brings_a_block_back_under_the_cap_links_as_a_rebuild_does(tmp_path):
    """A record leaves an over-full block: a build uses the block again and links Kate
    with Cate, though the removed record was neither's."""
    before = _population(BLOCK_CAP - 1)
    gone = ("gp", "f0")
    after = {k: v for k, v in before.items() if k != gone}
    together = _update_equals_rebuild(tmp_path, before, [Remove(*gone)], after)
    assert together


def test_a_record_that_moves_out_of_a_full_block_lets_its_pairs_link(tmp_path):
    """A filler moves house: it leaves the block (now at the cap), so Kate and Cate link."""
    before = _population(BLOCK_CAP - 1)
    moved = _filler(0)
    moved = record("gp", "f0", {**_fields(moved), "postcode": "DT1 2XY"})
    after = {**before, ("gp", "f0"): moved}
    together = _update_equals_rebuild(tmp_path, before, [Upsert(moved)], after)
    assert together


def _fields(r: SourcePerson) -> dict:
    return {
        "given": r.given,
        "family": r.family,
        "birth_date": r.birth_date,
        "postcode": r.postcode,
        "gender": r.gender,
        "nhs": r.nhs_number,
    }
