"""The birth-date clause's SQL text, its test texts made once (``_test_sql``), against the
text built value by value as before, kept here as the oracle: the same text and the same
bound values, in the same order, for drawn queries of any shape."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from carelink.storage import DateTest, NameTest, PersonQuery
from carelink.storage.person_query import _PRECISIONS, _Sql, eq_day, seekable_sql, where_sql


def old_clause_sql(q: _Sql, tests: tuple[DateTest, ...]) -> str:
    """``_clause_sql`` as it was: each test's text built, and its values bound, in turn."""
    day = eq_day(tests)
    if day is not None:
        return f"birth_date = {q.bind(day)}"
    parts = ["birth_date IS NOT NULL"]
    lengths = ", ".join(str(n) for n in _PRECISIONS)
    for t in tests:
        op = "<=" if t.bound == "starts<=" else ">="
        exact = q.any(
            f"(length(birth_date) = {n} AND birth_date {op} {q.bind(t.date[:n])})"
            for n in _PRECISIONS
        )
        if t.negate:
            parts.append(f"length(birth_date) IN ({lengths}) AND NOT {exact}")
            low = t.bound == "starts<="
            parts.append(
                f"birth_date {'>=' if low else '<='} {q.bind(t.date[:4] if low else t.date)}"
            )
            continue
        parts.append(exact)
        low = t.bound == "ends>="
        parts.append(f"birth_date {'>=' if low else '<='} {q.bind(t.date[:4] if low else t.date)}")
    return "(" + " AND ".join(parts) + ")"


days = st.dates(date(1, 1, 1), date(9999, 12, 31)).map(date.isoformat)
tests = st.builds(DateTest, st.sampled_from(["starts<=", "ends>="]), days, st.booleans())


@st.composite
def eq_days(draw: st.DrawFn) -> tuple[DateTest, ...]:
    """``birthdate=eq<day>``'s clause (so ``eq_day`` reads it), tests in either order."""
    d = draw(st.dates(date(1, 1, 2), date(9999, 12, 30)))
    before = date.fromordinal(d.toordinal() - 1).isoformat()
    after = date.fromordinal(d.toordinal() + 1).isoformat()
    pair = (DateTest("starts<=", before, True), DateTest("ends>=", after, True))
    return pair if draw(st.booleans()) else pair[::-1]


clauses = st.one_of(st.lists(tests, max_size=3).map(tuple), eq_days())
names = st.builds(
    NameTest,
    st.text(min_size=1, max_size=4),
    st.booleans(),
    st.one_of(st.none(), st.text(max_size=4)),
)
queries = st.builds(
    PersonQuery,
    family=st.lists(st.lists(names, max_size=2).map(tuple), max_size=2).map(tuple),
    given=st.lists(st.lists(names, max_size=2).map(tuple), max_size=2).map(tuple),
    birth_date=st.lists(st.lists(clauses, max_size=3).map(tuple), max_size=3).map(tuple),
)


@given(clause=clauses, mark=st.sampled_from(["?", "%s"]), ranges=st.booleans())
def test_clause_text_and_values_are_the_old_ones(clause, mark, ranges):
    from carelink.storage.person_query import _clause_sql

    new, old = _Sql(mark, ranges), _Sql(mark, ranges)
    new.bind("before")  # values already bound stay first
    old.bind("before")
    assert _clause_sql(new, clause) == old_clause_sql(old, clause)
    assert new.values == old.values


@given(query=queries, mark=st.sampled_from(["?", "%s"]), sqlite=st.booleans())
def test_a_whole_query_is_the_old_text(query, mark, sqlite):
    import carelink.storage.person_query as pq

    made = seekable_sql(query, mark, sqlite), where_sql(query, mark, sqlite)
    kept = pq._clause_sql
    pq._clause_sql = old_clause_sql
    try:
        assert (seekable_sql(query, mark, sqlite), where_sql(query, mark, sqlite)) == made
    finally:
        pq._clause_sql = kept
