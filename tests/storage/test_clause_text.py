"""A search's SQL text (``where_sql``: each kind of test only when asked; the birth-date
clause's test texts made once, ``_test_sql``) against the text built as before, kept here
as the oracle: the same text and the same bound values, in the same order, for drawn
queries of any shape."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

import carelink.storage.person_query as pq
from carelink.storage import DateTest, IdentifierTest, NameTest, PersonQuery
from carelink.storage.person_query import (
    _PRECISIONS,
    _clause_sql,
    _identifier_sql,
    _name_sql,
    _Sql,
    eq_day,
    seekable_sql,
    where_sql,
)


def old_where_sql(
    query: PersonQuery,
    mark: str,
    sqlite: bool = False,
    family: tuple[tuple[NameTest, ...], ...] | None = None,
) -> tuple[str, list[object]]:
    """``where_sql`` as it was: every kind of test's list made, asked or not."""
    q = _Sql(mark, ranges=sqlite)
    parts: list[str] = []
    parts += [
        f"id IN ({', '.join(q.bind(v) for v in alts)})" if alts else "1 = 0" for alts in query.ids
    ]
    parts += [q.any(_identifier_sql(q, t) for t in alts) for alts in query.identifiers]
    for raw, folded, tests in (
        ("family", "family_folded", query.family if family is None else family),
        ("given", "given_folded", query.given),
    ):
        parts += [q.any(_name_sql(q, raw, folded, t) for t in alts) for alts in tests]
    parts += [q.any(old_clause_sql(q, c) for c in alts) for alts in query.birth_date]
    parts += [
        f"gender IN ({', '.join(q.bind(v) for v in alts)})" if alts else "1 = 0"
        for alts in query.gender
    ]
    parts += [
        q.any(q.starts_with("replace(upper(postcode), ' ', '')", p) for p in alts)
        for alts in query.postcode
    ]
    for column, missing in (
        ("birth_date", query.birth_date_missing),
        ("gender", query.gender_missing),
    ):
        if missing is not None:
            parts.append(f"{column} IS NULL" if missing else f"{column} IS NOT NULL")
    return " AND ".join(["1 = 1", *parts]), q.values


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
short = st.text(max_size=4)
identifiers = st.builds(
    IdentifierTest, st.one_of(st.none(), short), short, st.one_of(st.none(), short)
)


def ors(items: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[tuple[object, ...], ...]]:
    """An AND of OR-lists, as ``PersonQuery``'s fields are (an empty OR-list included)."""
    return st.lists(st.lists(items, max_size=2).map(tuple), max_size=2).map(tuple)


missing = st.one_of(st.none(), st.booleans())
queries = st.builds(
    PersonQuery,
    ids=ors(short),
    identifiers=ors(identifiers),
    gender=ors(short),
    postcode=ors(short),
    birth_date_missing=missing,
    gender_missing=missing,
    family=st.lists(st.lists(names, max_size=2).map(tuple), max_size=2).map(tuple),
    given=st.lists(st.lists(names, max_size=2).map(tuple), max_size=2).map(tuple),
    birth_date=st.lists(st.lists(clauses, max_size=3).map(tuple), max_size=3).map(tuple),
)


@given(clause=clauses, mark=st.sampled_from(["?", "%s"]), ranges=st.booleans())
def test_clause_text_and_values_are_the_old_ones(clause, mark, ranges):
    new, old = _Sql(mark, ranges), _Sql(mark, ranges)
    new.bind("before")  # values already bound stay first
    old.bind("before")
    assert _clause_sql(new, clause) == old_clause_sql(old, clause)
    assert new.values == old.values


@given(query=queries, mark=st.sampled_from(["?", "%s"]), sqlite=st.booleans())
def test_a_whole_query_is_the_old_text(query, mark, sqlite):
    made = seekable_sql(query, mark, sqlite), where_sql(query, mark, sqlite)
    kept = pq.where_sql
    pq.where_sql = old_where_sql  # seekable_sql's own parts over the old text
    try:
        assert (seekable_sql(query, mark, sqlite), old_where_sql(query, mark, sqlite)) == made
    finally:
        pq.where_sql = kept
