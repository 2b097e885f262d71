"""The council's social-care simulator and its adapter over real HTTP.

The simulator runs under uvicorn on a loopback port; the real
``SocialCareSource`` talks to it with a real aiohttp session. Faults are
switched on through the simulator's ``Behaviour``, as the admin endpoint does.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import httpx
import pytest

from carelink.errors import SourceBadPayload, SourceUnavailable
from carelink.simulators.base import Behaviour
from carelink.simulators.population import social_demographics
from carelink.simulators.social_care import create_app
from carelink.simulators.store import PopulationSlice
from carelink.sources.base import SourcePerson
from carelink.sources.namespacing import namespaced_id
from carelink.sources.social_care import SocialCareSource
from tests.support.procs import free_port
from tests.support.schema import problems
from tests.support.servers import run_app

SEED = 17
SIZE = 3000
PATIENT_REF = "Patient/merged-7"
#: what each kind of council fact becomes in FHIR
RESOURCE_FOR = {
    "assessment": "ClinicalImpression",
    "service": "CarePlan",
    "alert": "Flag",
    "carer": "RelatedPerson",
}
VARIANTS = ("misspelt", "swapped", "old-address", "nickname")
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
def council() -> PopulationSlice:
    return PopulationSlice("social-care", SEED, SIZE)


@pytest.fixture
def faulty(behaviour: Behaviour) -> Iterator[Behaviour]:
    """The running simulator's behaviour, healed again after the test."""
    yield behaviour
    behaviour.error_rate = 0.0
    behaviour.malformed_rate = 0.0
    behaviour.down = False


def with_source(
    base_url: str, use: Callable[[SocialCareSource], Awaitable[T]], page_size: int = 500
) -> T:
    """Run ``use`` with a fresh adapter over its own session, closed afterwards."""

    async def go() -> T:
        async with aiohttp.ClientSession() as session:
            return await use(SocialCareSource(session, base_url, page_size=page_size))

    return asyncio.run(go())


async def everyone(source: SocialCareSource) -> list[SourcePerson]:
    return [p async for p in source.people()]


def test_people_pages_through_everyone_with_the_demographics_the_council_holds(base_url, council):
    got = with_source(base_url, everyone, page_size=9)
    assert len(council.by_local) > 9 * 3  # several pages, the last one partial
    assert [p.local_id for p in got] == council.local_ids()
    for p in got:
        held = social_demographics(council.by_local[p.local_id])
        assert p.source == "social-care"
        assert p.nhs_number == held["nhs_number"]
        assert (p.given, p.family, p.birth_date) == (
            held["given"],
            held["family"],
            held["birth_date"],
        )
        assert (p.postcode, p.address_line) == (held["postcode"], held["address_line"])
        assert p.patient["id"] == namespaced_id("social-care", p.local_id)
        assert problems(p.patient) == []


def test_the_unmatched_fifth_come_without_nhs_number_and_with_every_kind_of_variant(
    base_url, council
):
    got = {p.local_id: p for p in with_source(base_url, everyone)}
    variants = {ref: person for ref, person in council.by_local.items() if person.social_variant}
    assert 0.1 < len(variants) / len(council.by_local) < 0.3
    assert {person.social_variant for person in variants.values()} == set(VARIANTS)
    for ref, person in variants.items():
        assert got[ref].nhs_number is None
        assert not any(i["system"].endswith("nhs-number") for i in got[ref].patient["identifier"])
        gp = (person.given, person.family, person.postcode)
        assert (got[ref].given, got[ref].family, got[ref].postcode) != gp or (
            person.social_variant == "nickname" and len(person.given) <= 3
        )
    assert all(got[r].nhs_number for r in council.by_local if r not in variants)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_council_finds_its_own_record_by_the_demographics_it_holds(base_url, council, variant):
    ref, person = next((r, p) for r, p in council.by_local.items() if p.social_variant == variant)
    held = social_demographics(person)
    r = httpx.get(
        f"{base_url}/api/v2/persons/search",
        params={
            "surname": str(held["family"])[:4].upper(),
            "forename": str(held["given"])[:2].lower(),
            "dob": person.birth_date.strftime("%d/%m/%Y"),
            "postcode": str(held["postcode"]),
        },
    )
    assert r.status_code == 200
    assert [p["personRef"] for p in r.json()["items"]] == [ref]
    by_gp_number = httpx.get(
        f"{base_url}/api/v2/persons/search", params={"nhsNo": person.nhs_number}
    )
    assert by_gp_number.json()["items"] == []


def test_one_person_is_served_in_the_councils_shape_with_etag_and_last_modified(base_url, council):
    ref = council.local_ids()[0]
    first = httpx.get(f"{base_url}/api/v2/persons/{ref}")
    again = httpx.get(f"{base_url}/api/v2/persons/{ref}")
    assert first.status_code == 200
    body = first.json()
    assert body["personRef"] == ref
    assert re.fullmatch(r"\d{2}/\d{2}/\d{4}", body["dateOfBirth"])
    assert body["genderCode"] in ("M", "F")
    assert {"forename", "surname", "nhsNo", "addressLines", "postCode", "caseStatus"} <= set(body)
    assert first.headers["ETag"] == again.headers["ETag"]
    assert first.headers["Last-Modified"].endswith("GMT")


def test_a_record_has_one_resource_per_council_entry_and_the_persons_own_patient(base_url, council):
    refs = council.local_ids()[:40]

    async def fetch_all(source: SocialCareSource) -> list[list[dict]]:
        return [(await source.fetch_record(r, PATIENT_REF, None)).resources for r in refs]

    seen: set[str] = set()
    for ref, resources in zip(refs, with_source(base_url, fetch_all), strict=True):
        expected = Counter(RESOURCE_FOR[f.kind] for f in council.facts(ref))
        expected["Patient"] = 1
        assert Counter(r["resourceType"] for r in resources) == expected, ref
        assert resources[0]["id"] == namespaced_id("social-care", ref)
        for r in resources:
            assert r["meta"]["source"] == "urn:carelink:source:social-care"
            assert problems(r) == []
            if r["resourceType"] != "Patient":
                assert r.get("subject", r.get("patient")) == {"reference": PATIENT_REF}
            seen.add(r["resourceType"])
    assert seen == {"Patient", *RESOURCE_FOR.values()}


def test_restricted_alerts_arrive_labelled_sdv(base_url, council):
    ref = next(r for r in council.local_ids() if any(f.kind == "alert" for f in council.facts(r)))
    answer = with_source(base_url, lambda s: s.fetch_record(ref, PATIENT_REF, None))
    flags = [r for r in answer.resources if r["resourceType"] == "Flag"]
    assert flags
    assert all(f["meta"]["security"][0]["code"] == "SDV" for f in flags)


def test_types_narrow_a_record_but_keep_the_patient(base_url, council):
    ref = next(r for r in council.local_ids() if any(f.kind == "service" for f in council.facts(r)))
    answer = with_source(
        base_url, lambda s: s.fetch_record(ref, PATIENT_REF, frozenset({"CarePlan"}))
    )
    services = sum(f.kind == "service" for f in council.facts(ref))
    assert Counter(r["resourceType"] for r in answer.resources) == {
        "Patient": 1,
        "CarePlan": services,
    }


def test_an_answer_carries_the_etag_as_version_and_an_as_of_instant(base_url, council):
    ref = council.local_ids()[1]

    async def twice(source: SocialCareSource):
        return (
            await source.fetch_record(ref, PATIENT_REF, None),
            await source.fetch_record(ref, PATIENT_REF, None),
        )

    first, second = with_source(base_url, twice)
    etag = httpx.get(f"{base_url}/api/v2/persons/{ref}/case").headers["ETag"]
    assert first.version == second.version == etag
    assert INSTANT.match(first.as_of), first.as_of
    assert second.resources is first.resources


def test_an_unknown_person_is_an_empty_answer(base_url):
    answer = with_source(base_url, lambda s: s.fetch_record("SC99999999", PATIENT_REF, None))
    assert answer.resources == []


def test_an_answer_about_someone_else_is_refused(base_url, council):
    asked, other = council.local_ids()[2], council.local_ids()[3]
    body = httpx.get(f"{base_url}/api/v2/persons/{other}/case").content

    async def wrong(source: SocialCareSource) -> object:
        return source._map(body, asked, PATIENT_REF, None)

    with pytest.raises(SourceBadPayload, match="different person"):
        with_source(base_url, wrong)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"error_rate": 1.0}, SourceUnavailable),
        ({"down": True}, SourceUnavailable),
        ({"malformed_rate": 1.0}, SourceBadPayload),
    ],
    ids=["http-500", "down-503", "truncated-json"],
)
@pytest.mark.parametrize("call", ["fetch_record", "people"])
def test_a_failing_source_raises_the_matching_source_error(
    base_url, council, faulty, fault, error, call
):
    for name, value in fault.items():
        setattr(faulty, name, value)
    ref = council.local_ids()[0]

    async def use(source: SocialCareSource) -> object:
        if call == "people":
            return await everyone(source)
        return await source.fetch_record(ref, PATIENT_REF, None)

    with pytest.raises(error):
        with_source(base_url, use)


def test_a_source_that_is_not_running_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceUnavailable):
        with_source(url, lambda s: s.fetch_record("SC1", PATIENT_REF, None))
