"""Demographic search through the indexes, on a real SQLite file and on PostgreSQL: every
supported search form is read through an index, never a scan of the index, and what the
indexed SQL finds is what a plain scan of every person finds."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.patient_search import birth_date_clauses, patient_query
from carelink.fhir.search import fold, parse_date, target_range
from carelink.simulators.names import FAMILY
from carelink.storage import (
    IdentifierTest,
    IndexStore,
    LinkRow,
    NameTest,
    PersonQuery,
    PersonRow,
)
from carelink.storage.migrations import MIGRATIONS
from carelink.storage.person_query import after_prefix
from tests.support.people import person_row as person

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
#: the indexes a demographic search may read persons through
#: (by the folded name, so a range of dates is not read whole to find a few names)
NAME_AND_DATE = {"ix_persons_birth_family", "ix_persons_family_birth"}


@pytest.fixture
def store(index_store: IndexStore) -> IndexStore:
    return index_store


def population(n: int) -> list[PersonRow]:
    """The synthetic population's surnames, as common as each other, and a rare one that
    extends another (Smithson)."""
    rng = random.Random(5)
    start = date(1920, 1, 1)
    return [
        person(
            f"p{i:06d}",
            (start + timedelta(days=rng.randrange(36_500))).isoformat(),
            family="Smithson" if i % 500 == 0 else rng.choice(FAMILY),
            given=rng.choice(["Ada", "Alan", "Beth", "Bill", "Cara"]),
            gender=rng.choice(["male", "female"]),
            postcode=f"LS{rng.randrange(1, 30)} {rng.randrange(10)}AB",
            nhs_number=f"{9_000_000_000 + i}",
        )
        for i in range(n)
    ]


FORMS: dict[str, dict[str, list[str]]] = {
    "family + birthdate": {"family": ["smith"], "birthdate": ["1950-03-04"]},
    "+ given": {"family": ["smith"], "given": ["ad"], "birthdate": ["1950-03-04"]},
    "+ gender": {"family": ["smith"], "gender": ["female"], "birthdate": ["1950-03-04"]},
    "+ postcode": {
        "family": ["smith"],
        "address-postalcode": ["LS1"],
        "birthdate": ["1950-03-04"],
    },
    "family:exact": {"family:exact": ["Smith"], "birthdate": ["1950-03-04"]},
    "year range": {
        "family": ["smith"],
        "given": ["a"],
        "birthdate": ["ge1950-01-01", "le1950-12-31"],
    },
    "a year": {"family": ["jones"], "birthdate": ["1950"]},
    "a month, short prefix": {"family": ["s"], "birthdate": ["1950-03"]},
    "born before": {"family": ["patel"], "birthdate": ["lt1925"]},
    "born after": {"family": ["patel"], "birthdate": ["gt2015"]},
    "either name": {"family": ["smith,jones"], "birthdate": ["1950-03-04"]},
}


def test_every_search_form_reads_through_an_index(store):
    """At 20,000 people (PostgreSQL's planner with statistics, as after a build) no form
    scans persons or walks an index whole; demographic forms over a range of dates read
    persons through an index that holds the folded name."""
    store.replace_all(population(20_000), [], [])
    if not store.db.is_sqlite:
        with store.db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE persons")
    for form, params in FORMS.items():
        plan = store.plan(patient_query(params, [], NOW))
        assert plan, form
        assert all(step.startswith("index:") for step in plan), (form, plan)
        # a range of dates is never read whole for a few names (nor a name for a day)
        found = {step.removeprefix("index:") for step in plan} - {"persons_pkey"}
        assert found <= NAME_AND_DATE, (form, plan)
    nhs = store.plan(patient_query({"identifier": ["9434765919"]}, [], NOW))
    local = store.plan(PersonQuery(identifiers=((IdentifierTest(local_id="G1", source="gp"),),)))
    by_id = store.plan(patient_query({"_id": ["p000001"]}, [], NOW))
    for plan in (nhs, local, by_id):
        assert plan, plan
        assert all(step.startswith("index:") for step in plan), plan


def test_a_search_reads_through_the_indexes_find_reads_through(store):
    """The statement a search runs (``find_with_consents``; on SQLite the page's rowids
    ordered and cut apart from the rows read with their consents) reads persons through
    the very indexes ``find``'s does, for every form: it scans no persons, and it reads
    the consents too."""
    store.replace_all(population(20_000), [], [])
    if not store.db.is_sqlite:
        with store.db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE persons")
    for form, params in FORMS.items():
        query = patient_query(params, [], NOW)
        plan = store.plan(query, search=True)
        persons = {step for step in plan if "consents" not in step}
        assert persons == set(store.plan(query)), (form, plan)
        assert len(persons) < len(plan), (form, plan)  # the consents are read with them


def _indexed_columns(store: IndexStore) -> set[tuple[str, ...]]:
    with store.db.engine.connect() as conn:
        return {tuple(i["column_names"]) for i in sa.inspect(conn).get_indexes("persons")}


def test_migration_13_drops_the_name_and_the_date_indexed_alone(store):
    """A database from before migration 13, its indexes named as a SQLite build names
    them (with the build's token) or as the migrations did, keeps only the name-and-date
    indexes, the name first now with the given name; every search form still reads
    through them."""
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE INDEX ix_persons_family_folded_0a1b2c3d ON persons (family_folded)"
        )
        conn.exec_driver_sql("CREATE INDEX ix_persons_birth_date ON persons (birth_date)")
        # migration 12's index, as a build names it
        conn.exec_driver_sql("DROP INDEX ix_persons_family_birth")
        conn.exec_driver_sql(
            "CREATE INDEX ix_persons_family_birth_0a1b2c3d ON persons (family_folded, birth_date)"
        )
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 13")
    assert ("family_folded",) in _indexed_columns(store)
    assert store.db.migrate() == max(n for n, _, _ in MIGRATIONS)
    columns = _indexed_columns(store)
    assert ("family_folded",) not in columns
    assert ("birth_date",) not in columns
    assert ("family_folded", "birth_date") not in columns
    assert {("birth_date", "family_folded"), ("family_folded", "birth_date", "given_folded")} <= (
        columns
    )
    store.replace_all(population(2_000), [], [])
    for form, params in FORMS.items():
        plan = store.plan(patient_query(params, [], NOW))
        assert plan, form
        assert all(step.startswith("index:") for step in plan), (form, plan)


def test_a_prefix_over_a_range_of_dates_seeks_past_a_common_name(store):
    """With a few surnames each shared by a quarter of everyone (the synthetic population
    at the full test range has 52, some 17,000 people each), a search by a surname
    prefix over a range of dates reads persons through the name-first index only: the
    names longer than the prefix (rare here) are sought in it, never found by reading
    the whole range of dates. PostgreSQL, told ``family_folded <> 'brown'``, read a
    year whole (at the full range 11,617 people, 284 ms, to find none)."""
    rng = random.Random(9)
    start = date(1920, 1, 1)
    common = ["Brown", "Smith", "Jones", "Patel"]
    rows = [
        person(
            f"p{i:06d}",
            (start + timedelta(days=rng.randrange(36_500))).isoformat(),
            family="Browning" if i % 1000 == 0 else rng.choice(common),
            given=rng.choice(["Ada", "Alan", "Beth"]),
            nhs_number=f"{9_000_000_000 + i}",
        )
        for i in range(50_000)
    ]
    _stored_and_analysed(store, rows)
    for dates in (["ge1950-01-01", "le1950-12-31"], ["1950"], ["lt1925"], ["gt2015"]):
        params = {"family": ["brown"], "given": ["a"], "birthdate": dates}
        query = patient_query(params, [], NOW)
        found = [r.id for r in store.find(query)]
        assert found == scan(rows, query, dates)
        if store.db.is_sqlite:
            plan = store.plan(query)
            assert set(plan) <= {"index:ix_persons_family_birth", "index:persons_pkey"}, plan
            continue
        # PostgreSQL may read the exact name through either name-and-date index (its
        # estimate of a range of dates as text is poor); either way each read of an index
        # is bounded by the name, never by the dates alone
        reads = _index_conditions(store, query)
        assert reads, dates
        assert all("family_folded" in cond for cond in reads), (dates, reads)


def test_an_exact_name_on_a_day_is_sought_by_the_name_too(store):
    """``family:exact`` with a birth date reads persons through a name-and-date index
    bounded by the folded name as well as the date: it read every person born that day
    (25 at the full test range, each row fetched) to compare their names one by one."""
    rng = random.Random(5)
    rows = [
        person(
            f"p{i:05d}",
            f"1950-01-{1 + i % 3:02d}",
            family=rng.choice(["Brown", "BROWN", "Smith", "Jones", "Browning"]),
            given="Ada",
            nhs_number=f"{9_000_000_000 + i}",
        )
        for i in range(3_000)
    ]
    _stored_and_analysed(store, rows)
    params = {"family:exact": ["Brown"], "birthdate": ["1950-01-02"]}
    query = patient_query(params, [], NOW)
    found = [r.id for r in store.find(query)]
    assert found
    assert found == scan(rows, query, ["1950-01-02"])
    if store.db.is_sqlite:
        sql, values = store._find_sql(query, "", 500)
        with store.db.engine.connect() as conn:
            plan = [
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", tuple(values))
            ]
        reads = [step for step in plan if "INDEX ix_persons_" in step]
        assert reads, plan
        assert all("family_folded=" in step for step in reads), plan
        return
    reads = _index_conditions(store, query)
    assert reads
    assert all("family_folded" in cond for cond in reads), reads


def _common_names(n: int) -> list[PersonRow]:
    """``n`` people, each but a few of one of four common surnames; one in a thousand a
    Browning (a longer name starting with a common one)."""
    rng = random.Random(9)
    start = date(1920, 1, 1)
    return [
        person(
            f"p{i:06d}",
            (start + timedelta(days=rng.randrange(36_500))).isoformat(),
            family="Browning"
            if i % 1000 == 0
            else rng.choice(["Brown", "Smith", "Jones", "Patel"]),
            given=rng.choice(["Ada", "Alan", "Beth"]),
            nhs_number=f"{9_000_000_000 + i}",
        )
        for i in range(n)
    ]


#: searches by a surname prefix over a range of dates (the year range's kind)
RANGES = (["ge1950-01-01", "le1950-12-31"], ["1950"], ["lt1925"], ["gt2015"])


def test_a_search_planned_once_for_any_values_seeks_the_longer_names_by_the_name(store):
    """On PostgreSQL the request path's connections plan a statement once, for any values
    (``storage.hot``). That one plan of a search by a surname prefix over a range of
    dates reads every name-and-date index bounded by the name: the longer names too
    (``family_folded ~>~ 'brown' AND family_folded ~<~ 'browo'``). With only the lower
    bound, the plan (which cannot read the LIKE's pattern) read every person born in the
    range to find them."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's plans")
    _stored_and_analysed(store, _common_names(50_000))
    for dates in RANGES:
        query = patient_query({"family": ["brown"], "given": ["a"], "birthdate": dates}, [], NOW)
        reads = _generic_index_conditions(store, query)
        assert reads, dates
        assert all("family_folded" in cond for cond in reads), (dates, reads)


def test_a_search_by_a_range_of_dates_is_not_planned_again_each_time(store):
    """The request path's connection keeps one plan of a search's statement: of twenty
    searches by a surname prefix over a year, for different names and years, none is
    planned for its values once the driver has prepared the statement (its fifth use).
    Left to choose, PostgreSQL planned its first five for their values, and at 100,000
    people every one (0.4 ms of the backend's CPU a search, four times the reading's).
    Each finds what a scan finds."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's plans")
    rows = _common_names(5_000)
    _stored_and_analysed(store, rows)
    for i in range(20):
        family = ["brown", "smi", "jones", "pat"][i % 4]
        dates = [f"ge{1930 + i}-01-01", f"le{1930 + i}-12-31"]
        query = patient_query({"family": [family], "given": ["a"], "birthdate": dates}, [], NOW)
        found, _ = store.find_with_consents(query)
        assert [r.id for r in found] == scan(rows, query, dates)
    # the very connection the searches read on (this thread's kept one)
    plans = store._search(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
        ["SELECT p.id, p.patient, c.id, c.body, p.plain FROM (%"],
    )
    assert plans, "the driver prepares a statement on its fifth use"
    assert all(custom == 0 for _, custom in plans), plans
    assert sum(generic for generic, _ in plans) >= 15, plans


def test_a_range_of_dates_tests_the_given_name_in_the_index(store):
    """On PostgreSQL, the one plan for any values of a search by surname, given name and
    a range of dates tests the given name in the surname-date-given index (its pattern
    operator class, migration 22): it fetches only the rows whose given name matches.
    Before, the given name was a filter on each row fetched: at the full test range the
    year-range search fetched ~200 rows to return ~13, and PostgreSQL's reads cost
    1.4-1.9 ms of CPU a search (0.5-0.6 ms after)."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's plans")
    rows = _common_names(50_000)
    _stored_and_analysed(store, rows)
    for dates in RANGES:
        params = {"family": ["brown"], "given": ["a"], "birthdate": dates}
        query = patient_query(params, [], NOW)
        assert [r.id for r in store.find(query)] == scan(rows, query, dates)
        reads = _named_conditions(_generic_plan(store, query))
        given_first = [cond for name, cond in reads if name == "ix_persons_family_birth"]
        assert given_first, (dates, reads)
        assert all("given_folded" in cond for cond in given_first), (dates, reads)


def test_migration_22_puts_the_given_name_in_the_index_by_pattern(store):
    """A PostgreSQL database from before migration 22 (the given name in the
    surname-date-given index with the default operator class) gets the index with the
    pattern operator class, under the same name, and searches find what they found."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's operator classes")
    rows = _common_names(20_000)
    _stored_and_analysed(store, rows)
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_persons_family_birth")
        conn.exec_driver_sql(
            "CREATE INDEX ix_persons_family_birth ON persons"
            " (family_folded varchar_pattern_ops, birth_date, given_folded)"
        )
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 22")
    query = patient_query({"family": ["brown"], "given": ["a"], "birthdate": RANGES[0]}, [], NOW)
    before = [r.id for r in store.find(query)]
    reads = _named_conditions(_generic_plan(store, query))
    assert not any("given_folded" in cond for _, cond in reads), reads  # the old index
    assert store.db.migrate() == max(n for n, _, _ in MIGRATIONS)
    with store.db.engine.connect() as conn:
        (definition,) = conn.exec_driver_sql(
            "SELECT pg_get_indexdef(to_regclass('ix_persons_family_birth'))"
        ).one()
    assert "given_folded varchar_pattern_ops" in definition, definition
    assert [r.id for r in store.find(query)] == before == scan(rows, query, RANGES[0])
    reads = _named_conditions(_generic_plan(store, query))
    assert any(
        name == "ix_persons_family_birth" and "given_folded" in cond for name, cond in reads
    ), reads
    assert store.db.migrate() == max(n for n, _, _ in MIGRATIONS)  # again: nothing to do


def _named_conditions(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(index, condition) of each read of a name-and-date index in a plan."""
    here = []
    if node.get("Index Name", "") in NAME_AND_DATE:
        here.append((str(node["Index Name"]), str(node.get("Index Cond", ""))))
    return here + [c for child in node.get("Plans", []) for c in _named_conditions(child)]


def _generic_index_conditions(store: IndexStore, query: PersonQuery) -> list[str]:
    """The condition of each read of a name-and-date index in PostgreSQL's one plan for
    any values (``force_generic_plan``) of the statement a search runs."""
    return _conditions(_generic_plan(store, query))


def _generic_plan(store: IndexStore, query: PersonQuery) -> dict[str, Any]:
    """PostgreSQL's one plan for any values (``force_generic_plan``) of the statement a
    search runs."""
    import psycopg

    sql, values = store._with_consents_sql(query, "", 500)
    numbered = sql.split("%s")
    text = numbered[0] + "".join(f"${i}{rest}" for i, rest in enumerate(numbered[1:], 1))
    conn = store.db.engine.raw_connection()
    try:
        driver: Any = conn.driver_connection
        driver.autocommit = True
        driver.execute("SET plan_cache_mode = force_generic_plan")
        driver.execute(f"PREPARE probe AS {text}")
        try:
            marks = ", ".join(["%s"] * len(values))
            cur = psycopg.ClientCursor(driver)  # the values written into EXECUTE's text
            cur.execute(f"EXPLAIN (FORMAT JSON) EXECUTE probe({marks})", values)
            (document,) = cur.fetchone() or ()
        finally:
            driver.execute("DEALLOCATE probe")
            driver.execute("RESET plan_cache_mode")
            driver.autocommit = False
    finally:
        conn.close()
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def _stored_and_analysed(store: IndexStore, rows: list[PersonRow]) -> None:
    """``rows`` as the index, with PostgreSQL's statistics of them made (its plans
    follow them; SQLite's planner is told what it needs by the query itself)."""
    store.replace_all(rows, [], [])
    if not store.db.is_sqlite:
        with store.db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE persons")


def _index_conditions(store: IndexStore, query: PersonQuery) -> list[str]:
    """The condition of each read of a name-and-date index in PostgreSQL's plan for
    ``find(query)`` (the primary key's reads left out)."""
    sql, values = store._find_sql(query, "", 500)
    (document,) = store._search(f"EXPLAIN (FORMAT JSON) {sql}", values)[0]
    return _conditions(document[0]["Plan"])


def _conditions(node: dict[str, Any]) -> list[str]:
    """The condition of each read of a name-and-date index in a plan."""
    here = []
    if node.get("Index Name", "") in NAME_AND_DATE:
        here.append(str(node.get("Index Cond", "")))
    return here + [c for child in node.get("Plans", []) for c in _conditions(child)]


def test_plan_names_a_scan(store):
    """The plan reader is not blind: a search with no indexed criterion is a scan."""
    store.replace_all(population(200), [], [])
    plan = store.plan(PersonQuery(gender=(("female",),)))
    assert any(step.startswith("scan:") for step in plan), plan


def test_after_prefix_is_the_least_text_after_the_prefix():
    assert after_prefix("smith") == "smiti"
    assert after_prefix("a\ud7ff") == "a\ue000"  # no surrogates in text
    assert after_prefix("a\U0010ffff") == "b"
    assert after_prefix("\U0010ffff") is None
    assert after_prefix("") is None


# -- the property: the indexed SQL finds what a scan of every person finds --------------

#: names that sort around each other and around the prefix ranges' edges
names = st.sampled_from(
    [
        *("Smith", "smith", "Smi", "Smithers", "Smiti", "Smî", "Sm%th", "S_ith", "Sm/", "O'B"),
        *("ab", "a\ud7ff", "a\ue000", "a\U0010ffff", "b", "Ǆ"),
    ]
)


@st.composite
def stored_dates(draw: st.DrawFn) -> str | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    d = draw(st.dates(date(1948, 1, 1), date(1952, 12, 31)))
    return d.isoformat()[: draw(st.sampled_from([4, 7, 10, 10, 10]))]


@st.composite
def name_lists(draw: st.DrawFn) -> tuple[NameTest, ...]:
    tests = []
    for _ in range(draw(st.integers(1, 3))):
        text = draw(names)
        if draw(st.booleans()):
            # as a search asks (the fold beside the name), or the name alone
            folded = fold(text) if draw(st.booleans()) else None
            tests.append(NameTest(text, exact=True, folded=folded))
        else:
            cut = fold(text)
            tests.append(NameTest(cut[: draw(st.integers(1, max(1, len(cut))))]))
    return tuple(tests)


date_values = st.tuples(
    st.sampled_from(["", "eq", "lt", "gt", "le", "ge", "sa", "eb"]),
    st.dates(date(1948, 1, 1), date(1952, 12, 31)).map(date.isoformat),
    st.sampled_from([4, 7, 10]),
).map(lambda t: t[0] + t[1][: t[2]])


def scan(rows: list[PersonRow], query: PersonQuery, dates: list[str]) -> list[str]:
    """Every person tested in Python: names as FHIR string search, dates by the matcher."""

    def name_ok(raw: str, folded: str, tests: tuple[NameTest, ...]) -> bool:
        return any(raw == t.value if t.exact else folded.startswith(t.value) for t in tests)

    def date_ok(stored: str | None, value: str) -> bool:
        q = parse_date(value, "birthdate")
        return bool(stored) and (t := target_range(str(stored))) is not None and q.matches(t, NOW)

    return sorted(
        r.id
        for r in rows
        if all(name_ok(r.family, r.family_folded, alts) for alts in query.family)
        and all(name_ok(r.given, r.given_folded, alts) for alts in query.given)
        and all(date_ok(r.birth_date, v) for v in dates)
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    people=st.lists(st.tuples(names, names, stored_dates()), min_size=1, max_size=30),
    family=st.lists(name_lists(), min_size=1, max_size=2),
    given_names=st.lists(name_lists(), max_size=1),
    dates=st.lists(date_values, max_size=2),
    batch=st.integers(1, 7),
)
def test_indexed_search_finds_what_a_scan_finds(store, people, family, given_names, dates, batch):
    rows = [person(f"p{i:03d}", born, family=f, given=g) for i, (f, g, born) in enumerate(people)]
    store.replace_all(rows, [LinkRow("gp", "G1", rows[0].id, "gp-G1", "x", None, b"{}")], [])
    query = PersonQuery(
        family=tuple(family),
        given=tuple(given_names),
        birth_date=tuple(birth_date_clauses(parse_date(v, "birthdate"), NOW) for v in dates),
    )
    expected = scan(rows, query, dates)
    walked: list[str] = []
    while True:  # keyset pages of ``batch`` rows, as find_people walks them
        page = [r.id for r in store.find(query, after=walked[-1] if walked else "", limit=batch)]
        walked += page
        if len(page) < batch:
            break
    assert walked == expected
    assert store.count(query) == len(expected)
    # a search's statement (the page with its consents) walks the very same people
    searched: list[str] = []
    while True:
        rows, _ = store.find_with_consents(
            query, after=searched[-1] if searched else "", limit=batch
        )
        searched += [r.id for r in rows]
        if len(rows) < batch:
            break
    assert searched == expected
