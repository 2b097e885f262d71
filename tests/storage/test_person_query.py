"""Finding people in SQL, on a real SQLite file and on PostgreSQL: every criterion in the
database, exact counts, no cap, and birth-date search equal to the FHIR reference."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.patient_search import birth_date_clauses, find_people
from carelink.fhir.search import parse_date, target_range
from carelink.storage import (
    DateTest,
    IdentifierTest,
    IndexStore,
    LinkRow,
    NameTest,
    PersonQuery,
    PersonRow,
)
from tests.support.people import person_row as person

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PREFIXES = ["", "eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"]


def link(source: str, local_id: str, person_id: str) -> LinkRow:
    return LinkRow(source, local_id, person_id, f"{source}-{local_id}", "nhs-number", None, b"{}")


@pytest.fixture
def store(index_store: IndexStore) -> IndexStore:
    return index_store


def ids(store: IndexStore, query: PersonQuery) -> list[str]:
    return [r.id for r in store.find(query, limit=10_000)]


def born(value: str) -> PersonQuery:
    return PersonQuery(birth_date=(birth_date_clauses(parse_date(value, "birthdate"), NOW),))


def test_birthdate_search_has_no_cap_and_counts_exactly(store):
    """The old search read the first 1,000 rows by id and filtered in Python: here the
    people born on the day all sort after 1,200 others born the same year."""
    others = [person(f"a{i:05d}", f"1936-{1 + i % 12:02d}-{1 + i % 12:02d}") for i in range(1200)]
    wanted = [person(f"z{i}", "1936-05-13") for i in range(3)]
    store.replace_all(others + wanted, [], [])
    assert ids(store, born("1936-05-13")) == ["z0", "z1", "z2"]
    assert store.count(born("1936-05-13")) == 3
    assert store.count(born("1936")) == 1203
    walked = find_people(
        store, born("1936"), lambda rows, _held: [{"id": r.id} for r in rows], 1200, 10, batch=100
    )
    assert walked.total == 1203
    assert [p["id"] for p in walked.page] == ["z0", "z1", "z2"]


def test_names_prefix_on_folded_and_exact_as_stored(store):
    store.replace_all(
        [
            person("1", family="Ó Briain", given="Siobhán"),
            person("2", family="Obrien"),
            person("3", family="O"),
        ],
        [],
        [],
    )
    assert ids(store, PersonQuery(family=((NameTest("o b"),),))) == ["1"]
    assert ids(store, PersonQuery(family=((NameTest("o"),),))) == ["1", "2", "3"]
    assert ids(store, PersonQuery(family=((NameTest("O", exact=True),),))) == ["3"]
    assert ids(store, PersonQuery(family=((NameTest("o", exact=True),),))) == []
    assert ids(store, PersonQuery(given=((NameTest("siobh"),),))) == ["1"]
    either = PersonQuery(family=((NameTest("obr"), NameTest("o b")),))
    assert ids(store, either) == ["1", "2"]
    both = PersonQuery(family=((NameTest("o"),), (NameTest("ob"),)))
    assert ids(store, both) == ["2"]
    assert ids(store, PersonQuery(family=((NameTest("%"),),))) == []  # no LIKE wildcards


def test_gender_postcode_id_and_missing(store):
    store.replace_all(
        [
            person("1", gender="male", postcode="LS11 6AD"),
            person("2", gender=None, postcode="ls1 1aa", birth_date=None),
            person("3", gender="female", postcode=None),
        ],
        [],
        [],
    )
    assert ids(store, PersonQuery(gender=(("male", "female"),))) == ["1", "3"]
    assert ids(store, PersonQuery(gender_missing=True)) == ["2"]
    assert ids(store, PersonQuery(gender_missing=False)) == ["1", "3"]
    assert ids(store, PersonQuery(birth_date_missing=True)) == ["2"]
    assert ids(store, PersonQuery(postcode=(("LS1",),))) == ["1", "2"]
    assert ids(store, PersonQuery(postcode=(("LS116",),))) == ["1"]
    assert ids(store, PersonQuery(ids=(("1", "3"), ("3", "2")))) == ["3"]
    assert ids(store, PersonQuery(ids=((),))) == []
    assert ids(store, born("1936")) == ["1", "3"]  # no birth date: matches no date test
    assert ids(store, born("ne1936")) == []


def test_identifiers_by_nhs_number_and_local_id(store):
    store.replace_all(
        [person("1", nhs_number="9434765919"), person("2"), person("3")],
        [link("gp", "G1", "1"), link("acute", "RX9", "2"), link("gp", "RX9", "3")],
        [],
    )
    nhs = IdentifierTest(nhs_number="9434765919")
    assert ids(store, PersonQuery(identifiers=((nhs,),))) == ["1"]
    at_acute = IdentifierTest(local_id="RX9", source="acute")
    assert ids(store, PersonQuery(identifiers=((at_acute,),))) == ["2"]
    anywhere = IdentifierTest(local_id="RX9")
    assert ids(store, PersonQuery(identifiers=((anywhere,),))) == ["2", "3"]
    assert ids(store, PersonQuery(identifiers=((nhs, at_acute),))) == ["1", "2"]
    assert ids(store, PersonQuery(identifiers=((nhs,), (at_acute,)))) == []
    assert ids(store, PersonQuery(identifiers=((),))) == []
    assert store.count(PersonQuery(identifiers=((nhs, anywhere),))) == 3
    # one NHS number alone takes the lookup connection: same answers, keyset included
    assert ids(store, PersonQuery(identifiers=((IdentifierTest(nhs_number="9990000018"),),))) == []
    assert [r.id for r in store.find(PersonQuery(identifiers=((nhs,),)), after="1")] == []
    assert ids(store, PersonQuery(identifiers=((nhs,),), family=((NameTest("x"),),))) == []


def test_date_tests_on_partial_stored_dates(store):
    store.replace_all(
        [person("y", "1936"), person("m", "1936-02"), person("d", "1936-02-29")], [], []
    )
    ends_in_feb = PersonQuery(birth_date=(((DateTest("ends>=", "1936-02-29"),),),))
    assert ids(store, ends_in_feb) == ["d", "m", "y"]
    after_feb = PersonQuery(birth_date=(((DateTest("ends>=", "1936-03-01"),),),))
    assert ids(store, after_feb) == ["y"]
    assert ids(store, born("1936-02")) == ["d", "m"]
    assert ids(store, born("gt1936-02-29")) == ["y"]
    assert ids(store, born("ge1936-02-29")) == ["d", "m", "y"]
    assert ids(store, born("sa1936-01")) == ["d", "m"]


# -- the property: SQL equals the FHIR reference ----------------------------------------

years = st.integers(1930, 1942)


@st.composite
def partial_dates(draw: st.DrawFn) -> str:
    d = draw(st.dates(date(1930, 1, 1), date(1942, 12, 31)))
    return d.isoformat()[: draw(st.sampled_from([4, 7, 10, 10]))]


stored = st.one_of(st.none(), partial_dates())
queries = st.tuples(st.sampled_from(PREFIXES), partial_dates()).map("".join)


def reference(rows: list[PersonRow], value: str) -> list[str]:
    """Brute force with the FHIR matcher the per-type search uses."""
    q = parse_date(value, "birthdate")
    return sorted(
        r.id
        for r in rows
        if r.birth_date and (t := target_range(r.birth_date)) is not None and q.matches(t, NOW)
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    dates=st.lists(stored, min_size=0, max_size=25),
    values=st.lists(queries, min_size=1, max_size=6),
)
def test_birthdate_search_equals_the_reference(store, dates, values):
    rows = [person(f"p{i:03d}", d) for i, d in enumerate(dates)]
    store.replace_all(rows, [], [])
    for value in values:
        expected = reference(rows, value)
        assert ids(store, born(value)) == expected, value
        assert store.count(born(value)) == len(expected), value
    both = PersonQuery(
        birth_date=tuple(birth_date_clauses(parse_date(v, "birthdate"), NOW) for v in values)
    )
    anded = set.intersection(*(set(reference(rows, v)) for v in values))
    assert ids(store, both) == sorted(anded)
    ored = PersonQuery(
        birth_date=(
            tuple(c for v in values for c in birth_date_clauses(parse_date(v, "birthdate"), NOW)),
        )
    )
    assert ids(store, ored) == sorted(set().union(*(reference(rows, v) for v in values)))
