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
from typing import Literal

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
    """A folded-prefix match (FHIR string default) or, ``exact``, the name as stored."""

    value: str  # folded unless exact
    exact: bool = False


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
        return raw == t.value
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
