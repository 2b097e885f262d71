"""The community simulator and its adapter over real HTTP.

The simulator runs under uvicorn on a loopback port; the real
``CommunitySource`` talks to it with a real aiohttp session. Faults are
switched on through the simulator's ``Behaviour``, as the admin endpoint does.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import pytest

from carelink.errors import SourceBadPayload, SourceUnavailable
from carelink.simulators.base import Behaviour
from carelink.simulators.community import create_app
from carelink.simulators.store import PopulationSlice
from carelink.sources.base import SourcePerson
from carelink.sources.community import CommunitySource
from carelink.sources.namespacing import namespaced_id
from tests.support.procs import free_port
from tests.support.schema import problems
from tests.support.servers import run_app

SEED = 11
SIZE = 400
PATIENT_REF = "Patient/merged-1"
#: what each kind of population fact becomes in FHIR
RESOURCE_FOR = {
    "episode": "EpisodeOfCare",
    "contact": "Encounter",
    "condition": "Condition",
    "score": "Observation",
}
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

T = TypeVar("T")


@pytest.fixture(scope="module")
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture(scope="module")
def base_url(behaviour: Behaviour) -> Iterator[str]:
    with run_app(create_app(seed=SEED, size=SIZE, behaviour=behaviour)) as url:
        yield url


@pytest.fixture(scope="module")
def population() -> PopulationSlice:
    return PopulationSlice("community", SEED, SIZE)


@pytest.fixture
def faulty(behaviour: Behaviour) -> Iterator[Behaviour]:
    """The running simulator's behaviour, healed again after the test."""
    yield behaviour
    behaviour.error_rate = 0.0
    behaviour.malformed_rate = 0.0
    behaviour.down = False


def with_source(
    base_url: str, use: Callable[[CommunitySource], Awaitable[T]], page_size: int = 500
) -> T:
    """Run ``use`` with a fresh adapter over its own session, closed afterwards."""

    async def go() -> T:
        async with aiohttp.ClientSession() as session:
            return await use(CommunitySource(session, base_url, page_size=page_size))

    return asyncio.run(go())


async def everyone(source: CommunitySource) -> list[SourcePerson]:
    return [p async for p in source.people()]


def test_people_pages_through_everyone_the_trust_holds(base_url, population):
    got = with_source(base_url, everyone, page_size=7)
    assert len(population.by_local) > 7 * 3  # several pages, the last one partial
    assert len(got) == len(population.by_local)
    assert {p.local_id for p in got} == set(population.by_local)
    for p in got:
        person = population.by_local[p.local_id]
        assert p.source == "community"
        assert p.nhs_number == person.nhs_number
        assert (p.family, p.birth_date) == (person.family, person.birth_date.isoformat())
        assert p.postcode == person.postcode
        assert p.patient["id"] == namespaced_id("community", p.local_id)


def test_a_record_has_one_resource_per_fact_and_the_persons_own_patient(base_url, population):
    locals_ = population.local_ids()[:25]

    async def fetch_all(source: CommunitySource) -> list[list[dict]]:
        answers = [await source.fetch_record(lid, PATIENT_REF, None) for lid in locals_]
        return [a.resources for a in answers]

    records = with_source(base_url, fetch_all)
    seen: set[str] = set()
    for lid, resources in zip(locals_, records, strict=True):
        expected = Counter(RESOURCE_FOR[f.kind] for f in population.facts(lid))
        expected["Patient"] = 1
        assert Counter(r["resourceType"] for r in resources) == expected, lid
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        assert patient["id"] == namespaced_id("community", lid)
        for r in resources:
            assert r["meta"]["source"] == "urn:carelink:source:community"
            assert r["id"].startswith("community-")
            assert problems(r) == []
            owner = r.get("subject") or r.get("patient")
            if r["resourceType"] != "Patient":
                assert owner == {"reference": PATIENT_REF}
            seen.add(r["resourceType"])
    assert seen == {"Patient", *RESOURCE_FOR.values()}


def test_types_narrow_a_record_but_keep_the_patient(base_url, population):
    lid = population.local_ids()[0]

    async def narrow(source: CommunitySource) -> list[dict]:
        answer = await source.fetch_record(lid, PATIENT_REF, frozenset({"Encounter"}))
        return answer.resources

    got = with_source(base_url, narrow)
    contacts = sum(f.kind == "contact" for f in population.facts(lid))
    assert Counter(r["resourceType"] for r in got) == {"Patient": 1, "Encounter": contacts}


def test_an_answer_carries_a_version_and_an_as_of_instant(base_url, population):
    lid = population.local_ids()[0]
    answer = with_source(base_url, lambda s: s.fetch_record(lid, PATIENT_REF, None))
    assert answer.version
    assert INSTANT.match(answer.as_of), answer.as_of


def test_the_same_data_has_the_same_version_and_reuses_the_mapped_answer(base_url, population):
    lid = population.local_ids()[1]

    async def twice(source: CommunitySource):
        first = await source.fetch_record(lid, PATIENT_REF, None)
        await asyncio.sleep(1.1)  # MSH-7 once carried the serving time, changing every second
        second = await source.fetch_record(lid, PATIENT_REF, None)
        return first, second

    first, second = with_source(base_url, twice)
    assert first.version == second.version
    assert second.resources is first.resources


def test_an_answer_about_someone_else_is_refused(base_url, population):
    asked, other = population.local_ids()[2], population.local_ids()[3]

    async def wrong(source: CommunitySource):
        source.base = source.base.rstrip("/")
        data = (await source.session.get(f"{source.base}/record?pid={other}")).content
        body = await data.read()
        return source._map(body, asked, PATIENT_REF, None)

    with pytest.raises(SourceBadPayload, match="different person"):
        with_source(base_url, wrong)


def test_an_unknown_person_is_an_empty_answer(base_url):
    answer = with_source(base_url, lambda s: s.fetch_record("C99999999", PATIENT_REF, None))
    assert answer.resources == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"error_rate": 1.0}, SourceUnavailable),
        ({"down": True}, SourceUnavailable),
        ({"malformed_rate": 1.0}, SourceBadPayload),
    ],
    ids=["http-500", "down-503", "malformed-hl7"],
)
@pytest.mark.parametrize("call", ["fetch_record", "people"])
def test_a_failing_source_raises_the_matching_source_error(
    base_url, population, faulty, fault, error, call
):
    for name, value in fault.items():
        setattr(faulty, name, value)
    lid = population.local_ids()[0]

    async def use(source: CommunitySource) -> object:
        if call == "people":
            return await everyone(source)
        return await source.fetch_record(lid, PATIENT_REF, None)

    with pytest.raises(error):
        with_source(base_url, use)


def test_a_source_that_is_not_running_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceUnavailable):
        with_source(url, lambda s: s.fetch_record("C1", PATIENT_REF, None))
