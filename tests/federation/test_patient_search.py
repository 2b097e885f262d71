"""Patient search parameters to index criteria, and the walk that pages and counts only
what the caller is shown (called without HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.errors import InvalidRequest
from carelink.federation.patient_search import (
    find_people,
    identifier_tests,
    patient_params,
    patient_query,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database, IdentifierTest, IndexStore, NameTest, PersonQuery
from tests.support.people import person_row as person

NOW = datetime(2026, 11, 30, tzinfo=UTC)
SOURCES = ["gp", "acute"]


def query(**params: str) -> PersonQuery:
    return patient_query({k.replace("__", ":"): [v] for k, v in params.items()}, SOURCES, NOW)


def refused(**params: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        query(**params)
    return err.value


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ({"given": "ada"}, "family, birthdate"),
        ({"gender": "female"}, "family, birthdate"),
        ({"family": "hartley"}, "birthdate"),
        ({"birthdate": "1936"}, "family"),
        ({"family": "hartley", "birthdate__missing": "false"}, "birthdate"),
        ({"address-postalcode": "LS11", "given": "a", "gender": "male"}, "family, birthdate"),
        ({}, "family, birthdate"),
    ],
)
def test_below_the_minimum_is_refused_naming_what_is_missing(params, missing):
    err = refused(**params)
    assert str(err).endswith(f"missing: {missing}")
    assert err.parameter == missing.split(",")[0]


@pytest.mark.parametrize(
    "params",
    [
        {"family": "hartley", "birthdate": "1936"},
        {"family__exact": "Hartley", "birthdate": "ge1936-05"},
        {"identifier": f"{NHS_NUMBER_SYSTEM}|9434765919"},
        {"_id": "abc"},
    ],
)
def test_the_minimum_is_identifier_or_id_or_family_and_birthdate(params):
    query(**params)


@pytest.mark.parametrize(
    "name",
    [
        "family:contains",
        "given:text",
        "birthdate:xyz",
        "identifier:of-type",
        "gender:not",
        "_id:missing",
        "family:missing",
    ],
)
def test_unsupported_modifiers_are_refused(name):
    with pytest.raises(InvalidRequest, match="not supported") as err:
        patient_query({name: ["x"], "family": ["a"], "birthdate": ["1936"]}, SOURCES, NOW)
    assert err.value.parameter == name


def test_supported_modifiers_and_values_become_criteria():
    q = query(
        family__exact="Ó Briain",
        given="Siobhán,Sive",
        birthdate="1936",
        gender__missing="false",
        **{"address-postalcode": "ls11 6"},
    )
    assert q.family == ((NameTest("Ó Briain", exact=True, folded="o briain"),),)
    assert q.given == ((NameTest("siobhan"), NameTest("sive")),)
    assert q.gender_missing is False
    assert q.postcode == (("LS116",),)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"gender": "f"}, "gender"),
        ({"birthdate": "1936-05-12T10:00"}, "birthdate"),
        ({"birthdate": "12/05/1936"}, "birthdate"),
        ({"birthdate": "1936,"}, "birthdate"),
        ({"birthdate__missing": "yes"}, "birthdate:missing"),
        ({"family": ""}, "family"),
    ],
)
def test_bad_values_are_refused(params, parameter):
    err = refused(**{"family": "a", "birthdate": "1936", **params})
    assert err.parameter == parameter


SYSTEMS = {"https://carelink.example/Id/gp": "gp"}


@pytest.mark.parametrize("bad", ["1234567890", "943 476 5918", f"{NHS_NUMBER_SYSTEM}|9434765918"])
def test_a_bad_nhs_number_is_refused_with_or_without_its_system(bad):
    with pytest.raises(InvalidRequest, match="invalid NHS number") as err:
        identifier_tests(bad, SYSTEMS)
    assert err.value.parameter == "identifier"
    assert "5918" not in str(err.value)  # the value is not echoed


def test_identifier_tokens():
    valid = IdentifierTest(nhs_number="9434765919")
    assert identifier_tests(f"{NHS_NUMBER_SYSTEM}|9434765919", SYSTEMS) == (valid,)
    # no system: a valid NHS number, or that value as any source's local id
    assert identifier_tests("943 476 5919", SYSTEMS) == (
        valid,
        IdentifierTest(local_id="943 476 5919"),
    )
    assert identifier_tests("G123", SYSTEMS) == (IdentifierTest(local_id="G123"),)
    assert identifier_tests("https://carelink.example/Id/gp|G1", SYSTEMS) == (
        IdentifierTest(local_id="G1", source="gp"),
    )
    assert identifier_tests("https://elsewhere.example|G1", SYSTEMS) == ()
    assert identifier_tests("|G1", SYSTEMS) == ()
    with pytest.raises(InvalidRequest, match="needs a value"):
        identifier_tests(f"{NHS_NUMBER_SYSTEM}|", SYSTEMS)


def test_identifier_or_lists_and_repeats():
    q = query(identifier=f"{NHS_NUMBER_SYSTEM}|9434765919,https://carelink.example/Id/gp|G1")
    assert q.identifiers == (
        (IdentifierTest(nhs_number="9434765919"), IdentifierTest(local_id="G1", source="gp")),
    )


def test_patient_params_keeps_modifiers_and_names_the_rest():
    ours, others = patient_params(
        {"family:exact": ["A"], "birthdate": ["1936"], "_count": ["5"], "colour": ["blue"]}
    )
    assert ours == {"family:exact": ["A"], "birthdate": ["1936"]}
    assert others == ["_count", "colour"]


# -- the consent/total invariant -----------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Iterator[IndexStore]:
    db = Database(str(tmp_path / "index.db"))
    db.migrate()
    s = IndexStore(db)
    yield s
    s.close()
    db.dispose()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 25),
    withheld=st.sets(st.integers(0, 24)),
    count=st.integers(2, 7),
    batch=st.integers(1, 9),
)
def test_total_counts_exactly_what_the_caller_is_shown(store, n, withheld, count, batch):
    """Invariant: total == the number of matches ``shown`` lets through, and paging from
    0 by ``count`` lists each of them once and nobody withheld (whatever the batch size)."""
    rows = [person(f"p{i:02d}", "1936-05-12") for i in range(n)]
    store.replace_all(rows, [], [])
    hidden = {f"p{i:02d}" for i in withheld}
    q = query(family="hart", birthdate="1936")

    def shown(rows, _consents):
        return [None if row.id in hidden else {"id": row.id} for row in rows]

    visible = [r.id for r in rows if r.id not in hidden]
    listed: list[str] = []
    for offset in range(0, len(visible) + count, count):
        found = find_people(store, q, shown, offset, count, batch)
        assert found.total == len(visible)
        assert list(found.ids) == visible
        listed += [p["id"] for p in found.page]
    assert listed == visible
    assert store.count(q) == n  # the SQL count of candidates, before consent


@pytest.mark.parametrize(
    "value", ["le9999-12-31", "9999-12-31", "gt9999-12", "ge9999", "ap9999-06", "ap0001-06"]
)
def test_a_birthdate_in_the_last_year_is_a_400_naming_it_never_a_crash(value):
    # le9999-12-31 raised an OverflowError (a 500) before ``fhir.search`` ended such
    # ranges at the end of time; the day after it cannot be searched for
    assert "birthdate is out of range" in str(refused(family="hartley", birthdate=value))


def test_le_the_last_day_of_a_month_reads_up_to_and_including_that_day():
    (value,) = query(family="hartley", birthdate="le2000-12-31").birth_date
    assert [[(t.bound, t.date) for t in alt] for alt in value] == [[("starts<=", "2000-12-31")]]
