"""The council's API is searchable by demographics, as its own staff would search it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from carelink.simulators.base import Behaviour
from carelink.simulators.population import social_demographics
from carelink.simulators.social_care import create_app
from carelink.simulators.store import PopulationSlice
from tests.support.servers import run_app

SEED, SIZE = 13, 2500


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with run_app(create_app(seed=SEED, size=SIZE, behaviour=Behaviour())) as url:
        yield url


@pytest.fixture(scope="module")
def council() -> PopulationSlice:
    return PopulationSlice("social-care", SEED, SIZE)


def test_search_by_surname_and_date_of_birth_finds_the_person_as_the_council_holds_them(
    base, council
):
    ref, person = next((r, p) for r, p in council.by_local.items() if p.social_variant)
    held = social_demographics(person)
    dob = person.birth_date.strftime("%d/%m/%Y")
    r = httpx.get(
        f"{base}/api/v2/persons/search",
        params={"surname": str(held["family"])[:3].lower(), "dob": dob},
    )
    assert r.status_code == 200
    refs = [p["personRef"] for p in r.json()["items"]]
    assert ref in refs
    hit = next(p for p in r.json()["items"] if p["personRef"] == ref)
    assert hit["nhsNo"] is None
    assert hit["surname"] == held["family"]


def test_search_by_nhs_number_and_postcode(base, council):
    ref, person = next((r, p) for r, p in council.by_local.items() if not p.social_variant)
    by_nhs = httpx.get(f"{base}/api/v2/persons/search", params={"nhsNo": person.nhs_number})
    assert [p["personRef"] for p in by_nhs.json()["items"]] == [ref]
    by_pc = httpx.get(
        f"{base}/api/v2/persons/search",
        params={"postcode": person.postcode.replace(" ", "").lower()},
    )
    assert ref in [p["personRef"] for p in by_pc.json()["items"]]


def test_search_without_criteria_is_refused(base):
    r = httpx.get(f"{base}/api/v2/persons/search")
    assert r.status_code == 400
    assert "at least one" in r.json()["error"]


def test_unknown_person_is_404_in_the_councils_own_shape(base):
    r = httpx.get(f"{base}/api/v2/persons/NOPE/case")
    assert r.status_code == 404
    assert r.json() == {"error": "no person NOPE"}
