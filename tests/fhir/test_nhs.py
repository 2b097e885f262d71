"""NHS number checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.fhir.nhs import check_digit, is_valid, normalise, problem


def _valid_numbers() -> st.SearchStrategy[str]:
    return (
        st.integers(min_value=0, max_value=999_999_999)
        .map(lambda n: f"{n:09d}")
        .filter(lambda nine: check_digit(nine) is not None)
        .map(lambda nine: nine + str(check_digit(nine)))
    )


@given(_valid_numbers())
def test_a_number_with_its_check_digit_is_valid(number):
    assert is_valid(number)
    assert is_valid(f"{number[:3]} {number[3:6]} {number[6:]}")


@given(
    _valid_numbers(), st.integers(min_value=0, max_value=9), st.integers(min_value=1, max_value=9)
)
def test_changing_any_one_digit_makes_it_invalid(number, position, delta):
    digits = list(number)
    digits[position] = str((int(digits[position]) + delta) % 10)
    assert not is_valid("".join(digits))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("943476591", "must be 10 digits, got 9"),
        ("94347659190", "must be 10 digits, got 11"),
        ("94347659X9", "must be 10 digits"),
        ("", "must be 10 digits"),
        ("9434765918", "check digit does not match (modulus 11)"),
    ],
)
def test_problem_says_what_is_wrong(value, reason):
    assert problem(value) == reason


def test_known_valid_and_invalid_examples():
    assert is_valid("9434765919")
    assert is_valid("9000000009")
    # UK Core's baby example carries a number that fails modulus 11 (see tests/data/ukcore-examples)
    assert not is_valid("9912003890")


def test_normalise_strips_spaces_and_hyphens():
    assert normalise(" 943-476 5919 ") == "9434765919"
