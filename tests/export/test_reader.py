"""The extract's reads: retried, counted when a source stays down, read ahead in order.

Real patient index (a SQLite file), real ``SharedRecord`` and ``FanOut``; the sources
are small scripted ``Source`` implementations (what is under test is the reading, not
an adapter; the same paths with real simulators are in tests/integration/test_export.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from carelink.errors import SourceUnavailable
from carelink.export.reading import IN_FLIGHT, Member, Reader
from carelink.export.spec import ATTEMPTS, Result
from carelink.federation import SharedRecord
from carelink.federation.fanout import CircuitBreaker, FanOut
from carelink.federation.index import link_people
from carelink.simulators import population as pop
from carelink.sources.base import SourceAnswer, SourcePerson
from carelink.storage import Database, IndexStore
from tests.support.people import as_listed_by

SIZE = 20


class Scripted:
    """Answers each local id after ``delay(local_id)`` seconds; fails calls while
    ``failing(call number)`` says so."""

    def __init__(self, name, failing=lambda n: False, delay=lambda local_id: 0.0):
        self.name, self.failing, self.delay = name, failing, delay
        self.calls = 0

    async def fetch_record(self, local_id, patient_ref, types, nhs_number=None) -> SourceAnswer:
        self.calls += 1
        await asyncio.sleep(self.delay(local_id))
        if self.failing(self.calls):
            raise SourceUnavailable(self.name, "scripted failure")
        return SourceAnswer([{"resourceType": "Flag", "id": f"{self.name}-{local_id}"}], "v", "")

    async def people(self) -> AsyncIterator[SourcePerson]:  # pragma: no cover - unused
        return
        yield


@pytest.fixture
def index(tmp_path):
    db = Database(str(tmp_path / "index.db"))
    db.migrate()
    store = IndexStore(db)
    people = list(pop.people(3, SIZE))
    by_source = {name: as_listed_by(name, people) for name in ("gp", "acute")}
    persons, links, reviews, _ = link_people(by_source, store.secret())
    store.replace_all(persons, links, reviews)
    yield store
    db.dispose()


def members(index) -> list[Member]:
    return [Member.of(row) for row in index.each_person()]


def record(index, acute: Scripted) -> SharedRecord:
    sources = {"gp": Scripted("gp"), "acute": acute}
    never_open = {n: CircuitBreaker(threshold=10_000) for n in sources}
    return SharedRecord(index, FanOut(sources, budget=2.0, breakers=never_open))


def test_a_source_that_stays_down_is_tried_in_full_once_then_once_a_person(index):
    acute = Scripted("acute", failing=lambda n: True)
    reader = Reader(record(index, acute))

    async def all_of_them() -> None:
        for person in members(index):
            fed = await reader.read(person, None)
            assert {r.source: r.status for r in fed.results}["gp"] == "ok"

    asyncio.run(all_of_them())
    assert reader.incomplete == {"acute": SIZE}
    assert acute.calls == ATTEMPTS + (SIZE - 1)


def test_a_passing_failure_is_retried_and_not_reported(index):
    acute = Scripted("acute", failing=lambda n: n == 1)  # only the very first call fails
    reader = Reader(record(index, acute))
    person = members(index)[0]
    fed = asyncio.run(reader.read(person, None))
    assert {r.source: r.status for r in fed.results}["acute"] == "ok"
    assert reader.incomplete == {}
    assert acute.calls == 2


def test_reading_ahead_keeps_order_bounds_what_is_in_flight_and_cleans_up(index):
    people = members(index)
    # Later people answer sooner: order must still be the cohort's.
    rank = {pop.local_id("acute", i): i for i in range(SIZE)}
    acute = Scripted("acute", delay=lambda local_id: 0.002 * (SIZE - rank[local_id]))
    reader = Reader(record(index, acute))

    async def read_some() -> list[str]:
        seen = []
        async with aclosing(reader.ahead(people, None)) as records:
            async for i, person, _fed in records:
                assert i == len(seen)
                seen.append(person.id)
                running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                assert len(running) <= 3 * IN_FLIGHT  # a read and its two source fetches
                if len(seen) == 5:
                    break
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []  # the reads ahead were stopped when the reading stopped
        return seen

    assert asyncio.run(read_some()) == [p.id for p in people[:5]]


def test_error_texts_keep_small_counts_small():
    one = Result({}, 0, {}, None, "anonymised", "p", incomplete={"acute": 1})
    (outcome,) = one.errors()
    text = outcome["issue"][0]["diagnostics"]
    assert "for * of the extract's people" in text
    many = Result({}, 0, {}, None, "anonymised", "p", incomplete_cohort={"gp": 23})
    assert (
        "for 25 of the people considered for the cohort"
        in many.errors()[0]["issue"][0]["diagnostics"]
    )
