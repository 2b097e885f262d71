"""Finding people in the index with SQL: the criteria as plain values, and their WHERE clause.

The criteria know nothing of FHIR: the domain (``federation.patient_search``)
turns search parameters into them. Every field is an AND of OR-lists, as
FHIR combines repeated parameters (AND) and comma-separated values (OR).

Birth dates are stored as ISO text at the precision a source gave
(``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``), so a stored value covers a period
of days. Every date test reduces to one of two questions about that period,
each answered by comparing the stored text with the query date cut to the
stored value's own length; plain string comparison, identical on SQLite TEXT
and PostgreSQL VARCHAR:

- ``starts <= D``: the period's first day is on or before ``D``
  (``value <= D[:len(value)]``);
- ``ends >= D``: the period's last day is on or after ``D``
  (``value >= D[:len(value)]``).

A stored date that is NULL, or not 4, 7 or 10 characters long, matches no
date test (negated or not).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Any, Literal

import sqlalchemy as sa

from carelink.storage.tables import links, persons

_PRECISIONS = (4, 7, 10)


@dataclass(frozen=True)
class DateTest:
    """``starts <= date`` or ``ends >= date`` on a stored birth date's period (``negate``: not)."""

    bound: Literal["starts<=", "ends>="]
    date: str  # YYYY-MM-DD
    negate: bool = False


#: one birth-date alternative: every test holds
DateClause = tuple[DateTest, ...]


@dataclass(frozen=True)
class NameTest:
    """A folded-prefix match (FHIR string default) or, ``exact``, the name as stored.

    ``folded``: for an exact test, the name folded as the index folds names (every
    stored ``*_folded`` column is the fold of its name, so a name stored as ``value``
    is stored folded as this): the search then also asks for it, which an index of
    the folded names answers, instead of reading every person of the other criteria
    (a day's births) to compare their names one by one."""

    value: str  # folded unless exact
    exact: bool = False
    folded: str | None = None


@dataclass(frozen=True)
class IdentifierTest:
    """An NHS number, or a local id at one source (``source`` None: at any source)."""

    nhs_number: str | None = None
    local_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class PersonQuery:
    """Criteria on persons: each tuple entry is an OR-list, and all entries must hold.

    An empty OR-list matches nobody (e.g. every identifier named an unknown system).
    ``*_missing``: None (no test), True (must be absent), False (must be present).
    """

    ids: tuple[tuple[str, ...], ...] = ()
    identifiers: tuple[tuple[IdentifierTest, ...], ...] = ()
    family: tuple[tuple[NameTest, ...], ...] = ()
    given: tuple[tuple[NameTest, ...], ...] = ()
    birth_date: tuple[tuple[DateClause, ...], ...] = ()
    birth_date_missing: bool | None = None
    gender: tuple[tuple[str, ...], ...] = ()
    gender_missing: bool | None = None
    postcode: tuple[tuple[str, ...], ...] = ()  # upper case, no spaces: a prefix


def where(query: PersonQuery) -> sa.ColumnElement[bool]:
    """The WHERE clause selecting exactly the persons ``query`` describes."""
    parts: list[sa.ColumnElement[bool]] = []
    parts += [persons.c.id.in_(list(alts)) for alts in query.ids]
    parts += [_any(_identifier(t) for t in alts) for alts in query.identifiers]
    parts += [
        _any(_name(persons.c.family, persons.c.family_folded, t) for t in alts)
        for alts in query.family
    ]
    parts += [
        _any(_name(persons.c.given, persons.c.given_folded, t) for t in alts)
        for alts in query.given
    ]
    parts += [_any(_clause(c) for c in alts) for alts in query.birth_date]
    parts += [persons.c.gender.in_(list(alts)) for alts in query.gender]
    postcode = sa.func.replace(sa.func.upper(persons.c.postcode), " ", "")
    parts += [_any(postcode.startswith(p, autoescape=True) for p in a) for a in query.postcode]
    for column, missing in (
        (persons.c.birth_date, query.birth_date_missing),
        (persons.c.gender, query.gender_missing),
    ):
        if missing is not None:
            parts.append(column.is_(None) if missing else column.is_not(None))
    return sa.and_(sa.true(), *parts)


def _any(conditions: Iterable[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
    items = list(conditions)
    return sa.or_(*items) if items else sa.false()


def _identifier(t: IdentifierTest) -> sa.ColumnElement[bool]:
    if t.nhs_number is not None:
        return persons.c.nhs_number == t.nhs_number
    held = sa.select(links.c.person_id).where(links.c.local_id == t.local_id)
    if t.source is not None:
        held = held.where(links.c.source == t.source)
    return persons.c.id.in_(held)


def _name(raw: sa.Column[str], folded: sa.Column[str], t: NameTest) -> sa.ColumnElement[bool]:
    if t.exact:
        return raw == t.value if t.folded is None else sa.and_(raw == t.value, folded == t.folded)
    return folded.startswith(t.value, autoescape=True)


def _clause(tests: DateClause) -> sa.ColumnElement[bool]:
    """All tests of one alternative, plus index-friendly bounds implied by the plain ones."""
    value = persons.c.birth_date
    parts: list[sa.ColumnElement[bool]] = [value.is_not(None)]
    for t in tests:
        exact = sa.or_(
            *(
                sa.and_(
                    sa.func.length(value) == n,
                    value <= t.date[:n] if t.bound == "starts<=" else value >= t.date[:n],
                )
                for n in _PRECISIONS
            )
        )
        if t.negate:
            parts.append(sa.and_(sa.func.length(value).in_(_PRECISIONS), sa.not_(exact)))
            continue
        parts.append(exact)
        # v <= D[:n] implies v <= D, and v >= D[:n] implies v >= D[:4]: an index can use these
        parts.append(value <= t.date if t.bound == "starts<=" else value >= t.date[:4])
    return sa.and_(*parts)


def eq_day(tests: DateClause) -> str | None:
    """The day when one birth-date alternative is ``birthdate=eq<day>`` (``starts <= day - 1``
    and ``ends >= day + 1``, both negated): a stored date matches exactly when it is that
    day, since a partial date's period is longer than the query's."""
    if len(tests) != 2:
        return None
    starts, ends = sorted(tests, key=lambda t: t.bound, reverse=True)
    if not (
        starts.bound == "starts<=" and ends.bound == "ends>=" and starts.negate and ends.negate
    ):
        return None
    try:
        before, after = date.fromisoformat(starts.date), date.fromisoformat(ends.date)
    except ValueError:
        return None
    if after - before != timedelta(days=2):
        return None
    return (before + timedelta(days=1)).isoformat()


class _Sql:
    """SQL text and its bound values, built side by side (``mark``: the driver's placeholder;
    ``ranges``: prefixes as ranges of text, for SQLite, see ``starts_with``)."""

    def __init__(self, mark: str, ranges: bool = False) -> None:
        self.mark = mark
        self.ranges = ranges
        self.values: list[Any] = []

    def bind(self, value: Any) -> str:
        self.values.append(value)
        return self.mark

    def any(self, conditions: Iterable[str]) -> str:
        items = list(conditions)
        return "(" + " OR ".join(items) + ")" if items else "1 = 0"

    def starts_with(self, column: str, prefix: str) -> str:
        """``column`` starts with ``prefix``, case as given (the columns tested hold folded
        or upper-cased text, and so do the prefixes).

        With ``ranges``, as ``prefix <= column < after_prefix(prefix)``: SQLite compares
        text as UTF-8 bytes, in code point order, so the range holds exactly the texts
        starting with the prefix. Not LIKE: SQLite prepares a statement again each time a
        LIKE pattern is bound to it (its LIKE optimisation reads the bound value), which
        cost a search more than its indexed read."""
        if self.ranges:
            upper = after_prefix(prefix)
            low = f"{column} >= {self.bind(prefix)}"
            return f"({low} AND {column} < {self.bind(upper)})" if upper is not None else low
        # as SQLAlchemy's startswith(autoescape=True): "/" escapes "%", "_" and itself
        escaped = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_")
        return f"{column} LIKE {self.bind(escaped + '%')} ESCAPE '/'"


def where_sql(
    query: PersonQuery,
    mark: str,
    sqlite: bool = False,
    family: tuple[tuple[NameTest, ...], ...] | None = None,
) -> tuple[str, list[Any]]:
    """``where(query)`` as SQL text over ``persons`` and its bound values: the same rows,
    without building SQLAlchemy's expression for every search (twenty times the cost
    of the indexed read it asks for). A ``birthdate=eq<day>`` alternative is read as
    ``birth_date = day`` (see ``eq_day``), which an index answers; on SQLite a prefix is
    a range of text, not LIKE (``_Sql.starts_with``). ``family``: these ``family``
    tests instead of the query's (``seekable_sql``'s rest of the test)."""
    q = _Sql(mark, ranges=sqlite)
    parts: list[str] = []
    # each kind of test only when asked (a search asks for few of them)
    if query.ids:
        parts += [
            f"id IN ({', '.join(q.bind(v) for v in alts)})" if alts else "1 = 0"
            for alts in query.ids
        ]
    if query.identifiers:
        parts += [q.any(_identifier_sql(q, t) for t in alts) for alts in query.identifiers]
    families = query.family if family is None else family
    if families:
        parts += [
            q.any(_name_sql(q, "family", "family_folded", t) for t in alts) for alts in families
        ]
    if query.given:
        parts += [
            q.any(_name_sql(q, "given", "given_folded", t) for t in alts) for alts in query.given
        ]
    if query.birth_date:
        parts += [q.any(_clause_sql(q, c) for c in alts) for alts in query.birth_date]
    if query.gender:
        parts += [
            f"gender IN ({', '.join(q.bind(v) for v in alts)})" if alts else "1 = 0"
            for alts in query.gender
        ]
    if query.postcode:
        parts += [
            q.any(q.starts_with("replace(upper(postcode), ' ', '')", p) for p in alts)
            for alts in query.postcode
        ]
    if query.birth_date_missing is not None:
        parts.append("birth_date IS NULL" if query.birth_date_missing else "birth_date IS NOT NULL")
    if query.gender_missing is not None:
        parts.append("gender IS NULL" if query.gender_missing else "gender IS NOT NULL")
    return " AND ".join(["1 = 1", *parts]), q.values


def _name_sql(q: _Sql, raw: str, folded: str, t: NameTest) -> str:
    if not t.exact:
        if q.ranges:
            return q.starts_with(folded, t.value)
        # PostgreSQL: the LIKE and the prefix's range in byte order, which the name-first
        # index answers for both folded names (their pattern operator class, migration
        # 22): a statement planned once for any values cannot read a LIKE's pattern, so
        # without the range every row of the surname in a range of dates was fetched to
        # test the given name (bound in the order of the text)
        text = f"({q.starts_with(folded, t.value)} AND {folded} ~>=~ {q.bind(t.value)}"
        upper = after_prefix(t.value)
        if upper is not None:
            text += f" AND {folded} ~<~ {q.bind(upper)}"
        return text + ")"
    if t.folded is None:
        return f"{raw} = {q.bind(t.value)}"
    return f"({raw} = {q.bind(t.value)} AND {folded} = {q.bind(t.folded)})"


def seekable_sql(query: PersonQuery, mark: str, sqlite: bool) -> tuple[str, list[Any]]:
    """``where_sql`` shaped for the planners: the same rows, found through the
    name-and-date indexes.

    A search by a name prefix and a range of dates read every person born in the range
    (SQLite does not read ``LIKE 'smith%'`` through an index, its LIKE ignoring ASCII
    case; PostgreSQL judged the dates cheaper). Here each alternative of the first
    ``family`` list is split in two: the name exactly (``family_folded = 'smith'``,
    which with the dates is one seek in ``(family_folded, birth_date)``) and the longer
    names; each part is searched with the whole test and the rows found are united
    (``IN (... UNION ALL ...)``, which also drops a row found twice).

    SQLite reads the longer names as the range ``'smith' < family_folded < 'smiti'``
    (it compares text as UTF-8 bytes, in code point order, as ``after_prefix`` does, so
    every folded name starting with the prefix is in it), and ``likelihood`` tells its
    planner that the names longer than a prefix of three letters or more are few
    (without it, it reads the whole range of dates for them). PostgreSQL reads them as
    ``family_folded ~>~ 'smith'`` beside the LIKE: byte order, whatever the collation,
    and an operator of the pattern operator class that its ``(family_folded,
    birth_date)`` index has, so the index seeks past the name itself to the longer
    ones. (With ``<> 'smith'``, which no index answers, PostgreSQL's estimate of a
    range of dates as text was a hundredth of the truth: at the full test range it read
    a whole year, 11,617 people, to find none, 284 ms.) The range is closed above too,
    ``family_folded ~<~ 'smiti'`` (``after_prefix``, code point order being UTF-8's byte
    order): the LIKE bounds the range only when its pattern is known, and a statement
    planned once for any values (``storage.hot``) does not know it; without the bound
    that plan read every person born in the range to find the longer names.

    On SQLite each part implies its own alternative (the exact name, or the range of
    the longer ones), so the rest of the test leaves the first ``family`` list out: its
    ranges, beside the rare ones, would lead the planner to read the name whole."""
    if not query.family or not query.family[0]:
        return where_sql(query, mark, sqlite)
    key = "rowid" if sqlite else "id"
    selects, out = seekable_branches(query, mark, sqlite, key)
    return f"{key} IN ({' UNION ALL '.join(selects)})", out


def seekable_branches(
    query: PersonQuery, mark: str, sqlite: bool, columns: str
) -> tuple[list[str], list[Any]]:
    """``seekable_sql``'s parts, each a ``SELECT columns FROM persons WHERE ...`` with
    the whole test, and their bound values in order (``query`` has a first ``family``
    list). The parts of one alternative of that list never find the same person (the
    name exactly, and the names longer than it); those of two alternatives may (the
    prefixes ``smi`` and ``smith``)."""
    test, values = where_sql(query, mark, sqlite, query.family[1:] if sqlite else None)
    selects: list[str] = []
    out: list[Any] = []
    for t in query.family[0]:
        if t.exact and t.folded is not None:
            parts = [(f"family = {mark} AND family_folded = {mark}", [t.value, t.folded])]
        elif t.exact:
            parts = [("family = " + mark, [t.value])]
        elif sqlite:
            upper = after_prefix(t.value)
            # few names extend one of three letters or more: said so, or the planner
            # prefers a range of dates (the whole range, for a short prefix, is not few)
            rare = (lambda c: f"likelihood({c}, 0.001)") if len(t.value) >= 3 else str
            longer = rare(f"family_folded > {mark}") + (
                " AND " + rare(f"family_folded < {mark}") if upper else ""
            )
            parts = [
                (f"family_folded = {mark}", [t.value]),
                (longer, [t.value] + ([upper] if upper else [])),
            ]
        else:
            upper = after_prefix(t.value)
            below = f" AND family_folded ~<~ {mark}" if upper else ""
            parts = [
                (f"family_folded = {mark}", [t.value]),
                (f"family_folded ~>~ {mark}{below}", [t.value] + ([upper] if upper else [])),
            ]
        for part, part_values in parts:
            # our own column names; the values are bound
            selects.append(f"SELECT {columns} FROM persons WHERE {part} AND {test}")  # noqa: S608
            out += [*part_values, *values]
    return selects, out


def after_prefix(prefix: str) -> str | None:
    """The least text after every text that starts with ``prefix`` (None: there is none)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(0xE000 if last == 0xD7FF else last + 1)
        prefix = prefix[:-1]
    return None


def _identifier_sql(q: _Sql, t: IdentifierTest) -> str:
    if t.nhs_number is not None:
        return f"nhs_number = {q.bind(t.nhs_number)}"
    # our own column names; the value is bound
    held = f"SELECT person_id FROM person_links WHERE local_id = {q.bind(t.local_id)}"  # noqa: S608
    if t.source is not None:
        held += f" AND source = {q.bind(t.source)}"
    return f"id IN ({held})"


def _clause_sql(q: _Sql, tests: DateClause) -> str:
    """``_clause`` as text; the bounds each test implies are added for an index to use.
    A test's text depends only on its bound, ``negate`` and the placeholder
    (``_test_sql``); its values are the date cut to each precision, then the bound's."""
    if len(tests) == 2:
        day = eq_day(tests)
        if day is not None:
            return f"birth_date = {q.bind(day)}"
    parts = ["birth_date IS NOT NULL"]
    values = q.values
    for t in tests:
        parts.append(_test_sql(t.bound, t.negate, q.mark))
        d = t.date
        # not (v <= D[:n]) and v >= D[:n] imply v >= D[:4]; not (v >= D[:n]) and
        # v <= D[:n] imply v <= D
        low = (t.bound == "starts<=") if t.negate else (t.bound == "ends>=")
        values += (d[:4], d[:7], d[:10], d[:4] if low else d)
    return "(" + " AND ".join(parts) + ")"


@cache
def _test_sql(bound: str, negate: bool, mark: str) -> str:
    """One date test's text (``_clause``'s), binding ``D[:4]``, ``D[:7]``, ``D[:10]``, then
    the implied bound's value."""
    op = "<=" if bound == "starts<=" else ">="
    exact = (
        "("
        + " OR ".join(f"(length(birth_date) = {n} AND birth_date {op} {mark})" for n in _PRECISIONS)
        + ")"
    )
    if negate:
        lengths = ", ".join(str(n) for n in _PRECISIONS)
        low = bound == "starts<="
        return (
            f"length(birth_date) IN ({lengths}) AND NOT {exact}"
            f" AND birth_date {'>=' if low else '<='} {mark}"
        )
    low = bound == "ends>="
    return f"{exact} AND birth_date {'>=' if low else '<='} {mark}"
