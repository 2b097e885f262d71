"""Patient search and read against a real gateway process on an index of 1,250 people.

Everyone is called Hartley; 1,103 were born in 1936, three of them on
1936-05-12, and those three have the largest person ids, so a search that
looks at only the first 1,000 rows misses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.index import link_people, person_id
from carelink.federation.patient_search import MODIFIERS
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson
from carelink.storage import Database, IndexStore
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import token_gateways
from tests.support.tokens import Issuer

SIZE = 1250
BIRTHDAY = "1936-05-12"
STRANGER = "RXX01"


@dataclass(frozen=True)
class Crowd:
    base: str
    issuer: Issuer
    birthday: list[str]  # NHS numbers of the three born on BIRTHDAY
    born_1936: int

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.base}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token or self.token()}"},
            timeout=30,
        )

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)


def _build(db_path: Path) -> tuple[list[str], int]:
    db = Database(str(db_path))
    db.migrate()
    store = IndexStore(db)
    key = store.secret()
    people = sorted(pop.people(11, SIZE), key=lambda p: person_id(key, p.nhs_number, ""))
    listed = []
    for i, p in enumerate(people):
        if i >= SIZE - 3:
            born = BIRTHDAY
        elif i < 1100:
            born = f"1936-{1 + i % 12:02d}-{1 + i % 12:02d}"  # never 05-12
        else:
            born = "1950-01-01"
        local = pop.local_id("gp", p.index)
        patient = {
            "resourceType": "Patient",
            "id": f"gp-{local}",
            "meta": {"lastUpdated": "2026-11-01T10:00:00Z"},
            "name": [{"family": "Hartley", "given": [p.given]}],
            "gender": p.gender,
            "birthDate": born,
        }
        listed.append(
            SourcePerson(
                "gp", local, p.nhs_number, p.given, "Hartley", born, p.gender, None, None, patient
            )
        )
    persons, links, reviews, _ = link_people({"gp": listed}, key, "2026-11-02T10:00:00Z")
    store.replace_all(persons, links, reviews)
    store.close()
    db.dispose()
    return [p.nhs_number for p in people[-3:]], 1103


@pytest.fixture(scope="module")
def crowd(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crowd]:
    tmp = tmp_path_factory.mktemp("crowd")
    birthday, born_1936 = _build(tmp / "crowd.db")
    issuer = Issuer()
    with token_gateways(system.env, tmp / "crowd.db", issuer, tmp) as started:
        yield Crowd(started[0].base, issuer, birthday, born_1936)


def _nhs(bundle: dict[str, Any]) -> list[str]:
    return [
        i["value"]
        for e in bundle.get("entry", [])
        for i in e["resource"]["identifier"]
        if i["system"] == NHS_NUMBER_SYSTEM
    ]


def test_an_exact_birth_date_finds_everyone_born_that_day(crowd):
    r = crowd.get("/Patient", family="hartley", birthdate=BIRTHDAY)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 3
    assert sorted(_nhs(r.json())) == sorted(crowd.birthday)


def test_a_birth_year_finds_all_of_them_over_pages_with_an_exact_total(crowd):
    url: str | None = f"{crowd.base}/Patient?family=Hartley&birthdate=1936&_count=400"
    seen: list[str] = []
    token = crowd.token()
    while url:
        page = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        assert page["total"] == crowd.born_1936
        seen += _nhs(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == crowd.born_1936
    assert set(crowd.birthday) <= set(seen)
    counted = crowd.get("/Patient", family="Hartley", birthdate="1936", _summary="count")
    assert counted.json()["total"] == crowd.born_1936
    assert not counted.json().get("entry")


def test_birthdate_prefixes_and_identifier_or_lists(crowd):
    assert crowd.get("/Patient", family="h", birthdate="gt1936").json()["total"] == 147
    both = crowd.get("/Patient", family="h", birthdate=["ge1936-05-12", "le1936-05-12"]).json()
    assert both["total"] == 3
    either = ",".join(f"{NHS_NUMBER_SYSTEM}|{n}" for n in crowd.birthday[:2])
    r = crowd.get("/Patient", identifier=either)
    assert sorted(_nhs(r.json())) == sorted(crowd.birthday[:2])
    bare = crowd.get("/Patient", identifier=crowd.birthday[0])  # no system: an NHS number
    assert _nhs(bare.json()) == [crowd.birthday[0]]


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ({"given": "a"}, "family"),
        ({"family": "hartley"}, "birthdate"),
        ({"birthdate": "1936", "gender": "female"}, "family"),
        ({"family:contains": "art", "birthdate": "1936"}, "family:contains"),
        ({"family": "h", "birthdate:xyz": "1936"}, "birthdate:xyz"),
        ({"family": "h", "birthdate": "1936", "given:fuzzy": "a"}, "given:fuzzy"),
        ({"identifier": "1234567890"}, "identifier"),
        ({"identifier": "943 476 5918"}, "identifier"),
        ({"family": "h", "birthdate": "1936-05-12T10:00"}, "birthdate"),
    ],
)
def test_refused_searches_are_400_naming_the_parameter(crowd, params, expression):
    r = crowd.get("/Patient", **params)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome"
    assert issue["expression"] == [expression]


def test_totals_never_count_people_consent_withholds(crowd):
    """The invariant through the API: a person whose objection hides them from this caller
    is neither listed nor counted, on a page or by _summary=count."""
    clinician = crowd.token()
    hidden = crowd.birthday[0]
    found = crowd.get("/Patient", clinician, identifier=f"{NHS_NUMBER_SYSTEM}|{hidden}").json()
    pid = found["entry"][0]["resource"]["id"]
    officer = crowd.token(role="R0001")  # records choices for any patient (consentAccess)
    stored = httpx.post(
        f"{crowd.base}/Consent",
        json=privacy_consent(pid, {"type": "deny"}),
        headers={"Authorization": f"Bearer {officer}", "Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    try:
        stranger = crowd.token(organisation=STRANGER)
        day = crowd.get("/Patient", stranger, family="hartley", birthdate=BIRTHDAY).json()
        assert day["total"] == 2
        assert hidden not in _nhs(day)
        year = crowd.get("/Patient", stranger, family="hartley", birthdate="1936", _count=1)
        assert year.json()["total"] == crowd.born_1936 - 1
        counted = crowd.get(
            "/Patient", stranger, family="hartley", birthdate="1936", _summary="count"
        )
        assert counted.json()["total"] == crowd.born_1936 - 1
    finally:
        gone = httpx.delete(
            f"{crowd.base}/Consent/{stored.json()['id']}",
            headers={"Authorization": f"Bearer {officer}"},
            timeout=30,
        )
        assert gone.status_code == 204


class _Ids(tuple[str, ...]):
    """Person ids, shown short (hypothesis prints a failing example's arguments)."""

    def __repr__(self) -> str:
        return f"<{len(self)} person ids>"


@pytest.fixture(scope="module")
def born_1936(crowd: Crowd) -> _Ids:
    """The person ids of everyone born in 1936, as a clinician who sees them all pages them."""
    url: str | None = f"{crowd.base}/Patient?family=hartley&birthdate=1936&_count=1000"
    auth = {"Authorization": f"Bearer {crowd.token()}"}
    out: list[str] = []
    while url:
        page = httpx.get(url, headers=auth, timeout=60).json()
        out += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    assert len(out) == crowd.born_1936
    return _Ids(out)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(withheld=st.sets(st.integers(0, 1102), max_size=6), count=st.integers(250, 1000))
def test_pages_and_total_agree_whatever_consent_withholds(crowd, born_1936, withheld, count):
    """The invariant with each batch's consents read at once: objections over random
    people of a year's 1,103 matches (three batches of the walk), paged by a random
    _count; the pages together list each person shown exactly once, total counts exactly
    them, and nobody withheld is listed or counted."""
    hidden = {born_1936[i] for i in withheld}
    officer = {"Authorization": f"Bearer {crowd.token(role='R0001')}"}
    stored = []
    try:
        for pid in hidden:
            r = httpx.post(
                f"{crowd.base}/Consent",
                json=privacy_consent(pid, {"type": "deny"}),
                headers={**officer, "Content-Type": "application/fhir+json"},
                timeout=30,
            )
            assert r.status_code == 201, r.text
            stored.append(r.json()["id"])
        stranger = {"Authorization": f"Bearer {crowd.token(organisation=STRANGER)}"}
        url: str | None = f"{crowd.base}/Patient?family=hartley&birthdate=1936&_count={count}"
        listed: list[str] = []
        totals = set()
        while url:
            page = httpx.get(url, headers=stranger, timeout=60).json()
            totals.add(page["total"])
            listed += [e["resource"]["id"] for e in page.get("entry", [])]
            url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
        assert len(listed) == len(set(listed))
        assert set(listed) == set(born_1936) - hidden
        assert totals == {len(listed)}
    finally:
        for cid in stored:
            gone = httpx.delete(f"{crowd.base}/Consent/{cid}", headers=officer, timeout=30)
            assert gone.status_code == 204


def _read_path(patient: dict[str, Any], kind: str) -> str:
    if kind == "merged":
        return f"/Patient/{patient['id']}"
    return f"/{patient['link'][0]['other']['reference']}"


@pytest.mark.parametrize("kind", ["merged", "source"])
def test_reads_are_content_versioned_and_answer_304(crowd, kind):
    found = crowd.get("/Patient", identifier=f"{NHS_NUMBER_SYSTEM}|{crowd.birthday[1]}").json()
    patient = found["entry"][0]["resource"]
    path = _read_path(patient, kind)
    token = crowd.token()
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{crowd.base}{path}", headers=auth, timeout=30)
    assert r.status_code == 200
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    other = crowd.get("/Patient", identifier=f"{NHS_NUMBER_SYSTEM}|{crowd.birthday[2]}").json()
    other_path = _read_path(other["entry"][0]["resource"], kind)
    assert httpx.get(f"{crowd.base}{other_path}", headers=auth).headers["etag"] != etag
    for headers, status in [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": 'W/"other"'}, 200),
        ({"If-Modified-Since": modified}, 304),
        ({"If-Modified-Since": "Wed, 01 Oct 2025 00:00:00 GMT"}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-None-Match": 'W/"other"', "If-Modified-Since": modified}, 200),
    ]:
        again = httpx.get(f"{crowd.base}{path}", headers={**auth, **headers}, timeout=30)
        assert again.status_code == status, headers
        if status == 304:
            assert again.headers["etag"] == etag
            assert again.content == b""


def test_the_capability_statement_lists_exactly_the_patient_search_parameters(crowd):
    cs = httpx.get(f"{crowd.base}/metadata", timeout=30).json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {p["name"] for p in patient["searchParam"]} == set(MODIFIERS)
    for p in patient["searchParam"]:
        for modifier in MODIFIERS[p["name"]]:
            assert f":{modifier}" in p["documentation"]
    assert "family and birthdate" in patient["documentation"]
    assert patient["conditionalRead"] == "full-support"


@pytest.mark.parametrize("birthdate", [BIRTHDAY, "1900-01-01"])
def test_a_secondary_use_purpose_is_refused_whether_or_not_anyone_matches(crowd, birthdate):
    research = crowd.token(purpose_of_use="HRESCH")
    r = crowd.get("/Patient", research, family="hartley", birthdate=birthdate)
    assert r.status_code == 403
    assert r.json()["resourceType"] == "OperationOutcome"
