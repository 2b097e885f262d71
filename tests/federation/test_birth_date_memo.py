"""A birthdate value's clauses, remembered (``_birth_date``), against those made afresh
(``birth_date_clauses(_date(value), now)``): the same clauses, or the same refusal, for
drawn values, asked once and again, at two moments (``ap`` reads ``now``: never kept)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import InvalidRequest
from carelink.federation import patient_search as ps

PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


@st.composite
def values(draw: st.DrawFn) -> str:
    """A birthdate value: a prefix and a date cut to a precision, or with a time, or text."""
    d = draw(st.dates(date(1, 1, 1), date(9999, 12, 31))).isoformat()
    shaped = d[: draw(st.sampled_from([4, 7, 10]))] + draw(st.sampled_from(["", "", "T10:00"]))
    return draw(
        st.one_of(
            st.tuples(st.sampled_from(PREFIXES), st.just(shaped)).map("".join),
            st.tuples(st.sampled_from(PREFIXES), st.text(max_size=12)).map("".join),
            st.sampled_from(["ge2023-02-30", "eq0001-01-01", "le9999-12-31", "ap2000"]),
        )
    )


def fresh(value: str, now: datetime) -> object:
    try:
        return ps.birth_date_clauses(ps._date(value), now)
    except InvalidRequest as exc:
        return ("refused", str(exc), exc.parameter)
    except OverflowError as exc:  # parse_date's, at 9999-12-31 (as before: not ours here)
        return ("overflow", str(exc))


def remembered(value: str, now: datetime) -> object:
    try:
        return ps._birth_date(value, now)
    except InvalidRequest as exc:
        return ("refused", str(exc), exc.parameter)
    except OverflowError as exc:  # parse_date's, at 9999-12-31 (as before: not ours here)
        return ("overflow", str(exc))


moments = st.datetimes(datetime(1990, 1, 1), datetime(2060, 1, 1), timezones=st.just(UTC))


@given(value=values(), first=moments, later=st.timedeltas(timedelta(0), timedelta(days=9000)))
def test_remembered_clauses_are_the_fresh_ones(value, first, later):
    second = first + later
    assert remembered(value, first) == fresh(value, first)
    assert remembered(value, second) == fresh(value, second)  # a hit, or ap again
    assert value.startswith("ap") or fresh(value, first) == fresh(value, second)


def test_ap_is_not_kept_and_the_memo_is_bounded():
    now = datetime(2026, 12, 2, tzinfo=UTC)
    ps._birth_date("ap2000", now)
    assert "ap2000" not in ps._CLAUSES
    for year in range(1000, 1000 + ps._CLAUSES_KEPT + 5):
        ps._birth_date(f"ge{year}", now)
    assert 0 < len(ps._CLAUSES) <= ps._CLAUSES_KEPT
