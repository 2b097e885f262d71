"""FHIR search value parsing and matching."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import InvalidRequest
from carelink.fhir.search import (
    Token,
    alternatives,
    apply_elements,
    fold,
    parse_date,
    parse_token,
    string_matches,
    target_range,
    token_matches,
    unescaped,
)

CONCEPT = {
    "coding": [
        {"system": "http://loinc.org", "code": "8480-6"},
        {"system": "http://snomed.info/sct", "code": "72313002"},
    ]
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://loinc.org|8480-6", True),
        ("8480-6", True),
        ("|8480-6", False),
        ("http://snomed.info/sct|", True),
        ("http://loinc.org|72313002", False),
        ("http://loinc.org|1234-5,http://snomed.info/sct|72313002", True),
    ],
)
def test_token_matching(value, expected):
    assert token_matches(value, "code", CONCEPT) is expected


def test_empty_token_is_an_error_naming_the_parameter():
    with pytest.raises(InvalidRequest) as err:
        parse_token("", "code")
    assert err.value.parameter == "code"


@pytest.mark.parametrize(
    ("query", "target", "expected"),
    [
        ("2024", "2024-05-06T10:00:00+00:00", True),
        ("eq2024-05", "2024-05-06", True),
        ("eq2024-05", "2024-06-01", False),
        ("gt2024-05-06", "2024-05-07", True),
        ("gt2024-05-06", "2024-05-06T23:00:00Z", False),
        ("ge2024-05-06", "2024-05-06T23:00:00Z", True),
        ("lt2024-05-06", "2024-05-05", True),
        ("lt2024-05-06", "2024-05-06", False),
        ("le2024-05-06", "2024-05-06", True),
        ("ne2024", "2023-12-31", True),
        ("sa2024-01-01", "2024-01-02", True),
        ("eb2024-01-01", "2023-12-31", True),
        ("eb2024-01-01", "2024-01-01", False),
    ],
)
def test_date_prefixes(query, target, expected):
    rng = target_range(target)
    assert rng is not None
    assert parse_date(query, "date").matches(rng) is expected


def test_period_targets_use_their_bounds():
    rng = target_range({"start": "2024-01-01", "end": "2024-01-10"})
    assert parse_date("ge2024-01-05", "date").matches(rng)
    assert not parse_date("gt2024-01-10", "date").matches(rng)


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "2024-02-30", "xx2024", "24-01-01"])
def test_bad_dates_are_errors_naming_the_parameter(bad):
    with pytest.raises(InvalidRequest) as err:
        parse_date(bad, "birthdate")
    assert err.value.parameter == "birthdate"


def test_string_search_ignores_case_and_accents_and_matches_prefixes():
    assert string_matches("zoe", ["Zoë"])
    assert string_matches("sm", ["Smith"])
    assert not string_matches("mith", ["Smith"])


def test_elements_keeps_mandatory_and_named_and_marks_subsetted():
    r = {"resourceType": "Encounter", "id": "x", "status": "finished", "class": {}, "period": {}}
    out = apply_elements(r, frozenset({"status"}))
    assert set(out) == {"resourceType", "id", "meta", "status"}
    assert out["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert "meta" not in r


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in "\\,$|" else c for c in text)


_TEXT = st.text(alphabet=st.sampled_from("ab1 |,$\\é"), max_size=8)


@given(pairs=st.lists(st.tuples(_TEXT, _TEXT.filter(bool)), min_size=1, max_size=4))
def test_tokens_read_fhir_escapes(pairs):
    """Escaped ``| , $ \\`` stand for themselves in a token's system and code, so each
    alternative is the pair that was escaped, and matches exactly its own coding."""
    value = ",".join(f"{_escaped(s)}|{_escaped(c)}" for s, c in pairs)
    parts = alternatives(value)
    assert [parse_token(p, "code") for p in parts] == [Token(s, c) for s, c in pairs]
    for s, c in pairs:
        coding = {"system": s, "code": c} if s else {"code": c}
        assert token_matches(value, "code", coding)
        assert not token_matches(value, "code", {**coding, "code": c + "\x00"})


@given(texts=st.lists(_TEXT, min_size=1, max_size=4))
def test_string_alternatives_are_the_texts_escaped(texts):
    """A value of escaped texts joined by commas splits into those texts again, whether
    it holds an escape (the walk) or none (the plain split)."""
    value = ",".join(_escaped(t) for t in texts)
    assert [unescaped(p) for p in alternatives(value)] == texts


def test_a_token_without_a_system_is_unescaped():
    assert parse_token("a\\,b\\|c", "code") == Token(None, "a,b|c")
    assert alternatives("a\\,b,c") == ["a\\,b", "c"]


def _walked(text: str) -> str:
    """Folding as the walk does it, for every text (what ``fold`` must equal)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_folds_as_the_walk_does(text):
    assert fold(text) == _walked(text)


@given(st.text())
def test_any_text_folds_as_the_walk_does(text):
    assert fold(text) == _walked(text)


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Zoë", "zoe"),
        ("Straße", "strasse"),
        ("ﬁnch", "finch"),
        ("Ølund", "ølund"),
        ("KELVIN", "kelvin"),
    ],
)
def test_text_beyond_ascii_still_loses_its_accents_and_case(text, folded):
    assert fold(text) == folded


@pytest.mark.parametrize(
    ("value", "last_day"),
    [("9999", "9999-12-31"), ("9999-12", "9999-12-31"), ("le9999-12-31", "9999-12-31")],
)
def test_the_last_year_python_holds_ends_at_the_end_of_time_not_in_an_error(value, last_day):
    # its next year, month or day is past what a datetime holds (an OverflowError once)
    got = parse_date(value, "birthdate").range
    assert got.start < got.end
    assert got.end.date().isoformat() == last_day
    assert target_range(last_day) is not None


def test_a_range_before_the_last_year_still_ends_at_the_next_midnight():
    got = parse_date("2000-12", "birthdate").range
    assert got.end == datetime(2001, 1, 1, tzinfo=UTC)
