"""A record put together once is reused only while every input is the same.

Real patient index and resource locations (a SQLite file), real ``SharedRecord``,
``FanOut`` and ``RecordMemo``; the sources are small ``Source`` implementations that
hand back the very same resource objects until a test changes their answer, as the
real adapters do with their answer cache (``sources.answer_cache``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.errors import SourceUnavailable
from carelink.federation import SharedRecord
from carelink.federation.fanout import CircuitBreaker, FanOut
from carelink.federation.index import link_people
from carelink.federation.memo import ParsedPatients, RecordMemo
from carelink.fhir.jsonio import json_digest
from carelink.simulators import population as pop
from carelink.sources.base import SourceAnswer, SourcePerson, bulk_read
from carelink.storage import Database, IndexStore, LocationStore, PersonRow
from tests.support.people import as_listed_by

Json = dict

SOURCES = ("acute", "gp")


class Held:
    """Answers every question with ``resources``: the same objects until changed."""

    def __init__(self, name: str, resources: list[Json], by_type: bool = True) -> None:
        self.name = name
        self.resources = resources
        self.by_type = by_type  # False: sends everything whatever was asked (the gateway filters)
        self.version = "v1"
        self.as_of = "2026-01-01T00:00:00Z"

    async def fetch_record(self, local_id, patient_ref, types, nhs_number=None) -> SourceAnswer:
        wanted = [
            r
            for r in self.resources
            if types is None or not self.by_type or r["resourceType"] in types
        ]
        # the very same objects, as an adapter's answer cache hands them back
        return SourceAnswer(wanted, self.version, self.as_of)

    async def people(self) -> AsyncIterator[SourcePerson]:  # pragma: no cover - unused
        return
        yield


def condition(source: str, code: str, encounter: str | None = None) -> Json:
    out: Json = {
        "resourceType": "Condition",
        "id": f"{source}-c-{code}",
        "meta": {"source": f"urn:carelink:source:{source}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
    }
    if encounter:
        out["encounter"] = {"reference": encounter}
    return out


@pytest.fixture
def db(tmp_path):
    database = Database(str(tmp_path / "index.db"))
    database.migrate()
    store = IndexStore(database)
    people = [p for p in pop.people(3, 40) if set(SOURCES) <= set(p.sources)]
    by_source = {name: as_listed_by(name, people) for name in SOURCES}
    persons, links, reviews, _ = link_people(by_source, store.secret())
    store.replace_all(persons, links, reviews)
    yield database
    database.dispose()


@pytest.fixture
def world(db):
    sources = {
        "acute": Held("acute", [condition("acute", "1", "Encounter/acute-e1")]),
        "gp": Held("gp", [condition("gp", "2")]),
    }
    memo = RecordMemo()
    record = SharedRecord(
        IndexStore(db),
        FanOut(sources, budget=2.0),
        locations=LocationStore(db),
        memo=memo,
        fetch_targets=False,
    )
    person = next(iter(IndexStore(db).each_person()))
    return record, sources, memo, person


def federate(record: SharedRecord, person: PersonRow, types=None):
    return asyncio.run(record.federate(person.id, types, person=person))


def test_the_same_answers_give_the_very_same_record(world):
    record, _, memo, person = world
    first = federate(record, person)
    again = federate(record, person)
    assert again.resources is first.resources
    assert len(memo) == 1


def test_a_record_from_the_memo_is_the_one_made_without_it(world, db):
    record, sources, _, person = world
    federate(record, person)
    reused = federate(record, person)
    plain = SharedRecord(IndexStore(db), FanOut(sources, budget=2.0), fetch_targets=False)
    made = federate(plain, person)
    assert reused.resources == made.resources
    assert reused.provenance == made.provenance
    assert reused.etag == made.etag


def _by_source(fed) -> dict[str, Json]:
    return {p["agent"][0]["who"]["display"]: p for p in fed.provenance}


def test_provenance_is_made_once_while_the_answers_are_and_anew_when_one_moves(world, db):
    """A reused record's Provenance is the very same objects (their JSON made once) while
    each answer's version and as-of stay; a source answering as of a later instant, or at
    another version, with the very same resources, gets a Provenance saying so (and only
    that source), equal to one made without the memo, whose JSON (whole, and without
    ``recorded``) is its own. Fails when the as-of or the version is left out of what
    the Provenance is known by, or its JSON is not made with the new instant."""
    record, sources, _, person = world
    first = federate(record, person)
    again = federate(record, person)
    assert again.resources is first.resources
    assert all(a is b for a, b in zip(first.provenance, again.provenance, strict=True))
    plain = SharedRecord(IndexStore(db), FanOut(sources, budget=2.0), fetch_targets=False)
    for change in ("as_of", "version"):
        if change == "as_of":
            sources["gp"].as_of = "2026-02-01T00:00:00Z"
        else:
            sources["gp"].version = "v2"
        moved = federate(record, person)
        assert moved.resources is first.resources  # the same record, made once
        gp, acute = _by_source(moved)["gp"], _by_source(moved)["acute"]
        assert gp["recorded"] == "2026-02-01T00:00:00Z"
        assert gp["entity"][0]["what"]["identifier"]["value"] == sources["gp"].version
        assert acute is _by_source(first)["acute"]
        assert moved.provenance == federate(plain, person).provenance
        assert moved.encodings.of(gp) == orjson.dumps(gp)
        stable = {k: v for k, v in gp.items() if k != "recorded"}
        assert orjson.dumps([moved.encodings.without(gp, "recorded")]) == orjson.dumps([stable])
        # the digest the content version hashes, handed in with the copy: of that JSON
        assert moved.encodings.without_digest(gp, "recorded") == json_digest(orjson.dumps(stable))
        assert list(gp) == list(_by_source(federate(plain, person))["gp"])  # keys in order


def _located(db: Database) -> set[tuple[str, str]]:
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT resource_type, resource_id FROM resource_locations")
        return {(t, i) for t, i in rows}


def test_a_reused_records_locations_are_written_by_every_store_that_has_not(world, db):
    """A record reused from the memo skips noting where its resources live only in the
    store that wrote them: another store (another process's, or this one's after a
    restart) writes them all again. Fails when the record remembers "written" without
    remembering by whom."""
    record, sources, memo, person = world
    first = federate(record, person)
    want = {(r["resourceType"], r["id"]) for r in first.resources}
    assert want <= _located(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM resource_locations")
    assert federate(record, person).resources is first.resources
    assert not _located(db)  # the same store remembers it wrote them: nothing again
    other = SharedRecord(
        IndexStore(db),
        FanOut(sources, budget=2.0),
        locations=LocationStore(db),
        memo=memo,
        fetch_targets=False,
    )
    assert federate(other, person).resources is first.resources
    assert want <= _located(db)


def test_a_source_sending_other_objects_gives_a_new_record(world):
    record, sources, _, person = world
    first = federate(record, person)
    sources["gp"].resources = [condition("gp", "3")]  # new bytes at the GP: new objects
    changed = federate(record, person)
    assert changed.resources is not first.resources
    codes = {r["code"]["coding"][0]["code"] for r in changed.resources if "code" in r}
    assert codes == {"1", "3"}


def test_equal_but_other_objects_are_not_taken_for_the_same_answer(world):
    record, sources, _, person = world
    first = federate(record, person)
    sources["gp"].resources = orjson.loads(orjson.dumps(sources["gp"].resources))
    assert federate(record, person).resources is not first.resources


def test_another_patient_in_the_index_gives_a_new_record(world):
    record, _, _, person = world
    federate(record, person)
    patient = orjson.loads(person.patient)
    renamed = replace(person, patient=orjson.dumps({**patient, "gender": "unknown"}))
    out = federate(record, renamed)
    assert out.resources[0]["gender"] == "unknown"


def test_the_types_asked_for_are_part_of_the_key(world):
    record, sources, _, person = world
    # the very same answer whatever is asked: only the types tell the records apart
    sources["acute"] = Held("acute", [], by_type=False)
    sources["gp"] = Held("gp", [condition("gp", "2")], by_type=False)
    record.fanout.sources.update(sources)
    sources["gp"].resources.append({"resourceType": "Flag", "id": "gp-f1"})
    every = federate(record, person)
    assert {r["resourceType"] for r in every.resources} == {"Patient", "Condition", "Flag"}
    flags = federate(record, person, frozenset({"Flag", "Patient"}))
    assert {r["resourceType"] for r in flags.resources} == {"Patient", "Flag"}
    conditions = federate(record, person, frozenset({"Condition", "Patient"}))
    assert {r["resourceType"] for r in conditions.resources} == {"Patient", "Condition"}


def test_a_reference_target_learned_since_gives_a_new_record(world, db):
    record, _, _, person = world
    types = frozenset({"Condition", "Patient"})
    for _ in range(3):  # the record's own resources become known after the first
        before = federate(record, person, types)
    assert federate(record, person, types).resources is before.resources

    def encounter_of(resources: list[Json]) -> str:
        return next(r["encounter"]["reference"] for r in resources if "encounter" in r)

    assert encounter_of(before.resources) == "Encounter/acute-e1"
    # the gateway has since seen the GP's copy of that encounter in this person's record
    LocationStore(db).record(person.id, [("Encounter", "gp-e1")], "2026-01-02T00:00:00Z")
    after = federate(record, person, types)
    assert encounter_of(after.resources) == "Encounter/gp-e1"


def test_a_bulk_read_adds_nothing(world):
    record, _, memo, person = world

    async def bulk() -> None:
        with bulk_read():
            await record.federate(person.id, None, person=person)

    asyncio.run(bulk())
    assert len(memo) == 0


def test_the_least_recently_used_record_goes_first(world, db):
    record, _, _, _ = world
    record.memo = RecordMemo(maxsize=2)
    people = list(IndexStore(db).each_person())[:3]
    made = [federate(record, p).resources for p in people]
    assert len(record.memo) == 2
    assert federate(record, people[2]).resources is made[2]
    assert federate(record, people[0]).resources is not made[0]


def test_the_same_patient_bytes_give_the_very_same_object_and_other_bytes_another():
    """``ParsedPatients``: equal bytes read anew (another bytes object, as each database
    read gives) find the object parsed before, and a Patient changed by any process is
    other bytes, parsed anew; at most ``maxsize`` people are kept."""
    parsed = ParsedPatients(maxsize=2)
    raw = b'{"resourceType":"Patient","id":"p1"}'
    first = parsed.parse("p1", raw)
    assert parsed.parse("p1", bytes(bytearray(raw))) is first
    changed = parsed.parse("p1", b'{"resourceType":"Patient","id":"p1","gender":"male"}')
    assert changed == {"resourceType": "Patient", "id": "p1", "gender": "male"}
    assert changed is not first
    back = parsed.parse("p1", raw)  # and back again: parsed anew, not an older object
    assert back == first
    assert back is not first
    assert parsed.parse("p2", raw) is not back  # the same bytes, but another person's
    parsed.parse("p3", b'{"resourceType":"Patient","id":"p3"}')
    assert len(parsed) == 2
    assert parsed.parse("p1", raw) is not back  # forgotten: least recently used


def test_a_record_without_the_memo_parses_each_patient_anew(tmp_path):
    """``SharedRecord.index_patient``: shared objects only with ``ParsedPatients`` (a search
    then reuses its consent answers for them); without, a new object each time."""
    db = Database(f"sqlite:///{tmp_path / 'i.db'}")
    index = IndexStore(db)
    raw = b'{"resourceType":"Patient","id":"p1"}'
    row = PersonRow("p1", None, "", "", "", "", None, None, None, raw, "1")
    alone = SharedRecord(index, FanOut({}))
    assert not alone.shares_patients
    assert alone.index_patient(row) == orjson.loads(raw)
    assert alone.index_patient(row) is not alone.index_patient(row)
    sharing = SharedRecord(index, FanOut({}), patients=ParsedPatients())
    assert sharing.shares_patients
    again = replace(row, patient=bytes(bytearray(raw)))
    assert sharing.index_patient(row) is sharing.index_patient(again)
    db.dispose()


class Failing(Held):
    """``Held``, unreachable while ``down``."""

    down = False

    async def fetch_record(self, local_id, patient_ref, types, nhs_number=None) -> SourceAnswer:
        if self.down:
            raise SourceUnavailable(self.name, "down")
        return await super().fetch_record(local_id, patient_ref, types, nhs_number)


@settings(
    deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["v1", "v2"]),
            st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"]),
            st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", None]),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_records_provenance_and_etag_made_once_are_those_made_afresh(db, steps):
    """While the answers' versions, as-of and statuses stay, a reused record hands back the
    very Provenance list and ETag it made; whatever moves, they equal those of a record
    made without the memo."""
    sources = {
        "acute": Held("acute", [condition("acute", "1")]),
        "gp": Failing("gp", [condition("gp", "2")]),
    }

    def fan_out() -> FanOut:
        # circuits that never open: the two fan-outs see the same statuses whatever the time
        never = {name: CircuitBreaker(threshold=10**9) for name in sources}
        return FanOut(sources, budget=30.0, breakers=never)

    # one store for the example, closed after it: each holds a connection of the pool
    index = IndexStore(db)
    try:
        _stamped_as_made_afresh(index, sources, fan_out, steps)
    finally:
        index.close()


def _stamped_as_made_afresh(index: IndexStore, sources: dict, fan_out: Any, steps: list) -> None:
    record = SharedRecord(index, fan_out(), memo=RecordMemo(), fetch_targets=False)
    plain = SharedRecord(index, fan_out(), fetch_targets=False)
    person = next(iter(index.each_person()))
    last = None
    for version, acute_at, gp_at, down in steps:
        sources["gp"].version, sources["gp"].as_of, sources["gp"].down = version, gp_at, down
        sources["acute"].as_of = acute_at
        fed, fresh = federate(record, person), federate(plain, person)
        assert fed.provenance == fresh.provenance
        assert [orjson.dumps(p) for p in fed.provenance] == [
            fed.encodings.of(p) for p in fed.provenance
        ]
        assert fed.etag == fresh.etag
        # what they are made from: each source's status, version and as-of
        made_from = [(r.source, r.status, r.version, r.as_of) for r in fed.results]
        if last is not None and last[0] == made_from:
            assert fed.provenance is last[1].provenance  # the very list: made once
            assert fed.etag == last[1].etag
        last = (made_from, fed)
