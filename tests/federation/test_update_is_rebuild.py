"""Changes applied incrementally give the people a rebuild from the same sources gives.

Populations are drawn from a handful of names, birth dates and postcodes, so that
records crowd into shared blocks and near matches; the changes are new records,
demographic edits, merges at a source, NHS numbers added, removed and superseded.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.build import build_index
from carelink.federation.changes import (
    Change,
    MergeRecords,
    NhsNumberSuperseded,
    Remove,
    Upsert,
    apply_changes,
)
from carelink.federation.index import BuildReport
from carelink.federation.linkage import valid_nhs
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.sources.base import SourcePerson
from carelink.storage import IndexStore
from carelink.storage.tables import record_fields
from tests.federation.test_build import ListSource, _store
from tests.federation.test_changes import snapshot

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SOURCES = ("gp", "acute", "social-care")
GIVEN = ("Anna", "Ann", "Ben", "Bea")
FAMILY = ("Smith", "Smyth", "Jones", "Patel")
BORN = ("1950-03-04", "1950-04-03", "1950-03-05", "1961-07-21")
POSTCODE = ("BH1 1AA", "BH1 1AB", "DT1 2XY")


def _number(n: int) -> str:
    for seed in itertools.count(n * 7919 + 100_000_000):
        body = f"{seed:09d}"[-9:]
        digit = check_digit(body)
        if digit is not None and digit != 10:
            return body + str(digit)
    raise AssertionError("unreachable")


NUMBERS = tuple(_number(n) for n in range(4))

demographic = st.fixed_dictionaries(
    {
        "given": st.sampled_from(GIVEN),
        "family": st.sampled_from(FAMILY),
        "birth_date": st.sampled_from(BORN),
        "postcode": st.sampled_from(POSTCODE),
        "gender": st.sampled_from(("female", "male")),
        "nhs": st.one_of(st.none(), st.sampled_from(NUMBERS)),
    }
)


def record(source: str, local: str, d: dict) -> SourcePerson:
    """A source record with a Patient saying what its linking fields say."""
    ids = [{"system": NHS_NUMBER_SYSTEM, "value": d["nhs"]}] if d["nhs"] else []
    patient = {
        "resourceType": "Patient",
        "id": f"{source}-{local}",
        "identifier": ids,
        "name": [{"family": d["family"], "given": [d["given"]]}],
        "gender": d["gender"],
        "birthDate": d["birth_date"],
        "address": [{"postalCode": d["postcode"]}],
    }
    return SourcePerson(
        source,
        local,
        d["nhs"],
        d["given"],
        d["family"],
        d["birth_date"],
        d["gender"],
        d["postcode"],
        None,
        patient,
    )


def _renumbered(r: SourcePerson, new: str) -> SourcePerson:
    d = {
        "given": r.given,
        "family": r.family,
        "birth_date": r.birth_date,
        "postcode": r.postcode,
        "gender": r.gender,
        "nhs": new,
    }
    return record(r.source, r.local_id, d)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict, list[Change], dict]:
    """(population before, changes, population after), populations keyed by record."""
    before: dict[tuple[str, str], SourcePerson] = {}
    for n in range(draw(st.integers(3, 14))):
        source = draw(st.sampled_from(SOURCES))
        before[(source, f"r{n}")] = record(source, f"r{n}", draw(demographic))
    after = dict(before)
    changes: list[Change] = []
    fresh = itertools.count(100)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("new", "edit", "edit", "merge", "remove", "supersede")))
        keys = sorted(after)
        if kind == "new" or not keys:
            source = draw(st.sampled_from(SOURCES))
            local = f"r{next(fresh)}"
            r = record(source, local, draw(demographic))
            changes.append(Upsert(r))
            after[(source, local)] = r
        elif kind == "edit":  # any of name, birth date, address, NHS number changed
            key = draw(st.sampled_from(keys))
            old = after[key]
            d = draw(demographic)
            kept = draw(st.sets(st.sampled_from(sorted(d))))
            was = {
                "given": old.given,
                "family": old.family,
                "birth_date": old.birth_date,
                "postcode": old.postcode,
                "gender": old.gender,
                "nhs": old.nhs_number,
            }
            r = record(*key, {f: was[f] if f in kept else d[f] for f in d})
            changes.append(Upsert(r))
            after[key] = r
        elif kind == "merge":
            source = draw(st.sampled_from(SOURCES))
            mine = [k for k in keys if k[0] == source]
            if len(mine) < 2:
                continue
            old, into = draw(st.lists(st.sampled_from(mine), min_size=2, max_size=2, unique=True))
            changes.append(MergeRecords(source, old[1], into[1]))
            del after[old]
        elif kind == "remove":
            key = draw(st.sampled_from(keys))
            changes.append(Remove(*key))
            del after[key]
        else:
            old_number, new_number = draw(
                st.lists(st.sampled_from(NUMBERS), min_size=2, max_size=2, unique=True)
            )
            changes.append(NhsNumberSuperseded(old_number, new_number))
            for k, r in list(after.items()):
                if valid_nhs(r) == old_number:
                    after[k] = _renumbered(r, new_number)
    return before, changes, after


def build(store: IndexStore, records: dict[tuple[str, str], SourcePerson]) -> BuildReport:
    by = {s: [r for (src, _), r in sorted(records.items()) if src == s] for s in SOURCES}
    sources = [ListSource(n, rs) for n, rs in by.items()]
    return asyncio.run(build_index(sources, store, now=lambda: NOW))


#: hypothesis settings for tests that build indexes in files (slow, in tmp_path)
ROOMY: dict = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=60, **ROOMY)
@given(case=scenarios())
def test_changes_applied_incrementally_give_the_people_of_a_rebuild(tmp_path_factory, case):
    before, changes, after = case
    folder = tmp_path_factory.mktemp("rebuild")
    live = _store(str(folder / "live.db"))
    build(live, before)
    apply_changes(live, changes, now=lambda: NOW)
    fresh = _store(str(folder / "fresh.db"))
    build(fresh, after)
    assert snapshot(live) == snapshot(fresh)
    live.db.dispose()
    fresh.db.dispose()


def test_a_person_without_a_number_who_changes_surname_and_address_splits_as_a_rebuild_does(
    tmp_path,
):
    """The known case: linked by demographics alone, then renamed and moved at one source."""
    gp = record("gp", "g1", {**_anna(), "nhs": NUMBERS[0]})
    social = record("social-care", "s1", _anna())
    live = _store(str(tmp_path / "live.db"))
    build(live, {("gp", "g1"): gp, ("social-care", "s1"): social})
    assert len(snapshot(live)[0]) == 1
    moved = record("social-care", "s1", {**_anna(), "family": "Patel", "postcode": "DT1 2XY"})
    apply_changes(live, [Upsert(moved)], now=lambda: NOW)
    fresh = _store(str(tmp_path / "fresh.db"))
    build(fresh, {("gp", "g1"): gp, ("social-care", "s1"): moved})
    assert snapshot(live) == snapshot(fresh)
    assert len(snapshot(fresh)[0]) == 2  # a rebuild splits them too


def _anna() -> dict:
    return {
        "given": "Anna",
        "family": "Smith",
        "birth_date": "1950-03-04",
        "postcode": "BH1 1AA",
        "gender": "female",
        "nhs": None,
    }


def test_an_index_built_before_linking_fields_were_kept_gets_them_at_its_first_update(tmp_path):
    """An index from before migration 11 has links but no ``record_fields``: the first
    update keeps every linked record's fields, and so still finds a change's neighbours."""
    gp = record("gp", "g1", {**_anna(), "nhs": NUMBERS[0]})
    acute = record("acute", "a1", {**_anna(), "nhs": NUMBERS[1]})
    live = _store(str(tmp_path / "live.db"))
    build(live, {("gp", "g1"): gp, ("acute", "a1"): acute})
    with live.db.engine.begin() as conn:
        conn.execute(record_fields.delete())
    assert live.fields_missing()
    # a record without a number that matches the GP's Anna: found only through her fields
    social = record("social-care", "s1", _anna())
    apply_changes(live, [Upsert(social)], now=lambda: NOW)
    assert not live.fields_missing()
    fresh = _store(str(tmp_path / "fresh.db"))
    build(fresh, {("gp", "g1"): gp, ("acute", "a1"): acute, ("social-care", "s1"): social})
    assert snapshot(live) == snapshot(fresh)
