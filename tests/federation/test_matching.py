"""Demographic matching: explainable scores, variants found, strangers kept apart."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.federation.matching import (
    MATCH_THRESHOLD,
    REVIEW_THRESHOLD,
    Demographics,
    blocking_keys,
    key_value,
    lookup_values,
    score,
)
from carelink.simulators import population as pop

BASE = Demographics("Margaret", "Sutcliffe", "1941-03-07", "female", "HX3 5PW")


@pytest.mark.parametrize(
    "variant",
    [
        Demographics("Margaret", "Sutclife", "1941-03-07", "female", "HX3 5PW"),
        Demographics("Sutcliffe", "Margaret", "1941-03-07", "female", "HX3 5PW"),
        Demographics("Peggy", "Sutcliffe", "1941-03-07", "female", "HX3 5PW"),
        Demographics("Margaret", "Sutcliffe", "1941-03-07", "female", "LS6 1AB"),
        Demographics("Margaret", "Sutcliffe", "1941-07-03", "female", "HX3 5PW"),
    ],
)
def test_realistic_variants_of_one_person_score_above_the_match_threshold(variant):
    assert score(variant, BASE).total >= MATCH_THRESHOLD


@pytest.mark.parametrize(
    "stranger",
    [
        Demographics("John", "Smith", "1941-03-07", "male", "LS6 1AB"),
        Demographics("Margaret", "Sutcliffe", "1990-11-20", "female", "BD1 2XY"),
        Demographics("Ivy", "Begum", "1975-01-01", "female", "HX3 5PW"),
    ],
)
def test_different_people_score_below_the_match_threshold(stranger):
    assert score(stranger, BASE).total < MATCH_THRESHOLD


def test_the_explanation_names_every_field_and_its_weight():
    s = score(Demographics("Margaret", "Sutclife", "1941-03-07", "female", "HX3 5PA"), BASE)
    text = s.explain()
    for part in (
        "family=close",
        "given=exact",
        "birth_date=exact",
        "postcode=close",
        "gender=exact",
    ):
        assert part in text
    assert abs(sum(f.weight for f in s.fields) - s.total) < 0.05


def test_thresholds_are_ordered():
    assert REVIEW_THRESHOLD < MATCH_THRESHOLD


def test_every_generated_social_care_variant_shares_a_blocking_key_and_matches():
    people = [p for p in pop.people(8, 8000) if p.social_variant]
    assert len(people) > 20
    matched = 0
    for p in people:
        d = pop.social_demographics(p)
        record = Demographics(
            str(d["given"]), str(d["family"]), d["birth_date"], p.gender, d["postcode"]
        )
        truth = Demographics(p.given, p.family, p.birth_date.isoformat(), p.gender, p.postcode)
        assert set(blocking_keys(record)) & set(blocking_keys(truth))
        matched += score(record, truth).total >= MATCH_THRESHOLD
    assert matched == len(people)


def test_records_whose_names_both_differ_are_never_linked_automatically():
    """Same birth date, postcode and gender (the Synthea export has three such women) is
    at most a near miss: the match threshold needs at least one name to agree."""
    other = Demographics("Ivy", "Begum", BASE.birth_date, BASE.gender, BASE.postcode)
    s = score(other, BASE)
    assert REVIEW_THRESHOLD <= s.total < MATCH_THRESHOLD


#: few values of each field, so that records share blocking keys of every kind
alike = st.builds(
    Demographics,
    st.sampled_from(["Ann", "Anne", "Bob", "", "Mary Ann"]),
    st.sampled_from(["Smith", "Smyth", "Jones", ""]),
    st.sampled_from(["1950-03-04", "1950-04-03", "1950-03-05", "1951-03-04", None]),
    st.sampled_from(["female", "male", None]),
    st.sampled_from(["BH1 1AA", "bh11aa", "DT1 2XY", None]),
)


@given(st.lists(alike, min_size=2, max_size=6))
def test_records_sharing_a_blocking_key_share_the_lookup_value_it_names(people):
    """What an update counts to bound a block (``key_value``) is held by every record in
    the block: no block is larger than the records the index counts for it."""
    for key in {k for d in people for k in blocking_keys(d)}:
        holders = [d for d in people if key in set(blocking_keys(d))]
        values = {key_value(key, lookup_values(d)) for d in holders}
        assert len(values) == 1, (key, values)
        assert values.pop()[1:], key  # a value the index holds, never the empty one


#: the errors a second system makes to a record, as the benchmarks inject them
#: (``benchmarks/index_bench.py``, ``benchmarks/linkage_bench.py``)
ERRORS = ("family-typo", "given-typo", "day-month", "surname", "moved", "no-postcode", "nickname")

letters = st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=12)
postcodes = st.builds(
    lambda a, n, m, b: f"{a.upper()}{n} {m}{b.upper()}",
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=2),
    st.integers(1, 99),
    st.integers(0, 9),
    st.text("abdefghjlnpqrstuwxyz", min_size=2, max_size=2),
)


def _typo(name: str, i: int, how: str, letter: str) -> str:
    """One keying error past the first letter (a keyer sees the first letter right):
    a letter dropped, two swapped, one replaced or one added."""
    i = 1 + i % max(1, len(name) - 1)
    if how == "drop":
        return name[:i] + name[i + 1 :]
    if how == "swap" and i + 1 < len(name):
        return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    if how == "replace":
        return name[:i] + letter + name[i + 1 :]
    return name[:i] + letter + name[i:]


@st.composite
def second_record(draw):
    """(a person's record, the same person as another system keyed them: one or two
    of ``ERRORS``)."""
    given, family = draw(letters).capitalize(), draw(letters).capitalize()
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31))).isoformat()
    postcode = draw(postcodes)
    first = Demographics(given, family, born, draw(st.sampled_from(["female", "male"])), postcode)
    d = {"given": given, "family": family, "birth_date": born, "postcode": postcode}
    for error in draw(st.lists(st.sampled_from(ERRORS), min_size=1, max_size=2, unique=True)):
        edit = (draw(st.integers(0, 20)), draw(st.sampled_from(["drop", "swap", "replace", "add"])))
        letter = draw(st.sampled_from("aeinorst"))
        if error == "family-typo":
            d["family"] = _typo(d["family"], *edit, letter)
        elif error == "given-typo":
            d["given"] = _typo(d["given"], *edit, letter)
        elif error == "day-month" and int(born[8:]) <= 12:
            d["birth_date"] = f"{born[:4]}-{born[8:]}-{born[5:7]}"
        elif error == "surname":
            d["family"] = draw(letters).capitalize()
        elif error == "moved":
            d["postcode"] = draw(postcodes)
        elif error == "no-postcode":
            d["postcode"] = None
        elif error == "nickname":
            d["given"] = draw(letters).capitalize()
    second = Demographics(d["given"], d["family"], d["birth_date"], first.gender, d["postcode"])
    return first, second


@given(second_record())
def test_one_or_two_keying_errors_leave_a_blocking_key_in_common(pair):
    """Blocking loses no true match to the errors the linkage is measured on: a record
    with any one or two of them shares a blocking key with the record it came from, so
    linkage compares the two (block sizes apart, which ``index_bench`` measures at the
    full range: ``missed_links``). Three errors may leave none (a new surname, a
    nickname with another initial and a move leave only the birth date)."""
    first, second = pair
    assert set(blocking_keys(first)) & set(blocking_keys(second)), pair
