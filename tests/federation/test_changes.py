"""Changes at a source applied to the live index give what a rebuild would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from carelink.federation.build import build_index
from carelink.federation.changes import (
    MergeRecords,
    NhsNumberSuperseded,
    Remove,
    Upsert,
    apply_changes,
)
from carelink.federation.read import retired_patient
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson
from carelink.storage import IndexStore
from tests.federation.test_build import ListSource, _store

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(source: str, p: pop.Person, nhs: str | None = "same", **change: str) -> SourcePerson:
    """``p`` as ``source`` lists them, with a Patient that says the same (and ``change``s)."""
    d = {
        "given": p.given,
        "family": p.family,
        "birth_date": p.birth_date.isoformat(),
        "postcode": p.postcode,
        "local_id": pop.local_id(source, p.index),
        **change,
    }
    number = p.nhs_number if nhs == "same" else nhs
    ids = [{"system": NHS_NUMBER_SYSTEM, "value": number}] if number else []
    patient = {
        "resourceType": "Patient",
        "id": f"{source}-{d['local_id']}",
        "identifier": ids,
        "name": [{"family": d["family"], "given": [d["given"]]}],
        "gender": p.gender,
        "birthDate": d["birth_date"],
        "address": [{"postalCode": d["postcode"]}],
    }
    return SourcePerson(
        source,
        d["local_id"],
        number,
        d["given"],
        d["family"],
        d["birth_date"],
        p.gender,
        d["postcode"],
        None,
        patient,
    )


def population(people: list[pop.Person]) -> dict[str, list[SourcePerson]]:
    by: dict[str, list[SourcePerson]] = {"gp": [], "acute": [], "social-care": []}
    for p in people:
        by["gp"].append(record("gp", p))
        if "acute" in p.sources:
            by["acute"].append(record("acute", p))
        if p.social_variant:
            d = pop.social_demographics(p)
            by["social-care"].append(
                record(
                    "social-care",
                    p,
                    None,
                    **{k: str(d[k]) for k in ("given", "family", "postcode")},
                )
            )
    return by


def build(store: IndexStore, by: dict[str, list[SourcePerson]]) -> None:
    asyncio.run(build_index([ListSource(n, r) for n, r in by.items()], store, now=lambda: NOW))


def snapshot(store: IndexStore) -> tuple[set, dict]:
    """Who is who (record keys grouped by person id), and each person's NHS number."""
    people: dict[str, set] = {}
    numbers = {}
    for p in store.each_person():
        people[p.id] = {(lk.source, lk.local_id) for lk in store.links_of(p.id)}
        numbers[p.id] = p.nhs_number
    return {(pid, frozenset(v)) for pid, v in people.items()}, numbers


PEOPLE = list(pop.people(21, 1500))


def test_upserts_give_the_index_a_rebuild_gives(tmp_path):
    before = population(PEOPLE[:1400])
    store = _store(str(tmp_path / "a.db"))
    build(store, before)
    after = {s: list(rs) for s, rs in before.items()}
    changes = []
    for p in PEOPLE[1400:1450]:  # new registrations at the GP
        changes.append(Upsert(record("gp", p)))
    for p in PEOPLE[1450:1470]:  # hospital records without a number, some with a typo
        changes.append(Upsert(record("acute", p, None, family=p.family[:-1] + "e")))
    for n, p in enumerate(PEOPLE[:30]):  # moved house
        changes.append(Upsert(record("gp", p, postcode=p.postcode[:-2] + "ZZ")))
        after["gp"][n] = changes[-1].record
    for c in changes[:70]:
        after[c.record.source].append(c.record)
    report = apply_changes(store, changes, now=lambda: NOW)
    assert report.changes == 100
    assert not report.unknown
    fresh = _store(str(tmp_path / "b.db"))
    build(fresh, after)
    assert snapshot(store) == snapshot(fresh)


def test_a_new_registration_is_found_by_nhs_number_at_once(tmp_path):
    store = _store(str(tmp_path / "a.db"))
    build(store, population(PEOPLE[:200]))
    newcomer = PEOPLE[1499]
    assert store.person_by_nhs(newcomer.nhs_number) is None
    apply_changes(store, [Upsert(record("gp", newcomer))])
    found = store.person_by_nhs(newcomer.nhs_number)
    assert found is not None
    assert [lk.local_id for lk in store.links_of(found.id)] == [pop.local_id("gp", newcomer.index)]


def test_an_a40_merge_leaves_one_record_and_one_person(tmp_path):
    """A hospital registers someone twice (once without a number); A40 merges the two."""
    p = PEOPLE[3]
    store = _store(str(tmp_path / "a.db"))
    by = population(PEOPLE[:100])
    by["acute"].append(record("acute", p, None, local_id="TEMP1"))
    build(store, by)
    temp = store.link("acute", "TEMP1")
    assert temp is not None
    assert temp.person_id != store.person_by_nhs(p.nhs_number).id  # same source: kept apart
    persons = store.counts()["persons"]
    report = apply_changes(store, [MergeRecords("acute", "TEMP1", pop.local_id("acute", p.index))])
    assert store.link("acute", "TEMP1") is None
    assert store.counts()["persons"] == persons - 1
    assert (report.persons_before, report.persons_after) == (2, 1)
    assert all(r.local_id != "TEMP1" for r in store.reviews())
    # the temporary registration's person id is retired, pointing to the survivor
    survivor = store.person_by_nhs(p.nhs_number).id
    assert retired_patient(store, temp.person_id) == {
        "resourceType": "Patient",
        "id": temp.person_id,
        "active": False,
        "link": [{"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}],
    }
    assert retired_patient(store, survivor) is None  # a live id is not retired


def test_a_superseded_nhs_number_moves_the_person_to_the_new_number(tmp_path):
    p = PEOPLE[5]
    store = _store(str(tmp_path / "a.db"))
    build(store, population(PEOPLE[:50]))
    old = store.person_by_nhs(p.nhs_number)
    records = {(lk.source, lk.local_id) for lk in store.links_of(old.id)}
    new = next(
        n + str(d)
        for n in (str(int(p.nhs_number[:9]) + k) for k in range(1, 50))
        if (d := check_digit(n)) is not None
    )
    apply_changes(store, [NhsNumberSuperseded(p.nhs_number, new)])
    assert store.person_by_nhs(p.nhs_number) is None
    moved = store.person_by_nhs(new)
    assert moved is not None
    assert moved.id != old.id
    assert {(lk.source, lk.local_id) for lk in store.links_of(moved.id)} == records
    assert store.person(old.id) is None
    assert store.successors(old.id) == [moved.id]  # the old id leads to the new


def test_removing_a_record_and_naming_an_unknown_one(tmp_path):
    p = PEOPLE[7]
    store = _store(str(tmp_path / "a.db"))
    build(store, population(PEOPLE[:50]))
    gp = pop.local_id("gp", p.index)
    report = apply_changes(store, [Remove("gp", gp), Remove("gp", "NOBODY")])
    assert store.link("gp", gp) is None
    assert report.unknown == [("gp", "NOBODY")]
