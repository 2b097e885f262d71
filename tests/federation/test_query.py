"""Per-type search criteria: modifiers, OR lists, and refusing what is not supported."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.errors import InvalidRequest
from carelink.federation.query import criteria

LOINC = "http://loinc.org"


def obs(code: str | None, status: str = "final") -> dict:
    out: dict = {"resourceType": "Observation", "id": "o", "status": status}
    if code is not None:
        out["code"] = {"coding": [{"system": LOINC, "code": code}]}
    return out


def match(params: dict[str, list[str]], resource: dict) -> bool:
    crit, unknown = criteria("Observation", params)
    assert unknown == []
    return all(c.matches(resource) for c in crit)


def test_not_excludes_the_code_and_keeps_resources_without_one():
    assert not match({"code:not": ["2823-3"]}, obs("2823-3"))
    assert match({"code:not": ["2823-3"]}, obs("8867-4"))
    assert match({"code:not": ["2823-3"]}, obs(None))
    assert not match({"code:not": [f"{LOINC}|2823-3"]}, obs("2823-3"))


def test_not_with_a_list_excludes_every_code_in_it():
    assert not match({"code:not": ["8867-4,2823-3"]}, obs("2823-3"))
    assert not match({"code:not": ["8867-4", "2823-3"]}, obs("8867-4"))
    assert match({"code:not": ["8867-4,2823-3"]}, obs("1234-5"))


def test_or_lists_match_any_code():
    assert match({"code": ["8867-4,2823-3"]}, obs("2823-3"))
    assert not match({"code": ["8867-4,1234-5"]}, obs("2823-3"))


def test_missing_true_and_false():
    assert match({"code:missing": ["true"]}, obs(None))
    assert not match({"code:missing": ["true"]}, obs("2823-3"))
    assert match({"code:missing": ["false"]}, obs("2823-3"))
    assert match({"date:missing": ["true"]}, obs("2823-3"))
    assert not match({"date:missing": ["false"]}, obs("2823-3"))


@pytest.mark.parametrize(
    "param",
    ["code:text", "code:exact", "code:above", "date:not", "status:contains", "code:"],
)
def test_unsupported_modifiers_are_refused_naming_the_parameter(param):
    with pytest.raises(InvalidRequest) as err:
        criteria("Observation", {param: ["x"]})
    assert err.value.parameter == param


def test_missing_takes_only_true_or_false():
    with pytest.raises(InvalidRequest):
        criteria("Observation", {"code:missing": ["yes"]})


def test_modifiers_on_unknown_parameters_are_unknown_not_errors():
    _, unknown = criteria("Observation", {"colour:not": ["blue"]})
    assert unknown == ["colour:not"]


codes = st.sampled_from(["2823-3", "8867-4", "1234-5", "85354-9"])


@given(code=st.one_of(st.none(), codes), wanted=st.lists(codes, min_size=1, max_size=3))
def test_not_is_the_complement_of_the_plain_search(code, wanted):
    value = ",".join(wanted)
    resource = obs(code)
    assert match({"code:not": [value]}, resource) != match({"code": [value]}, resource)
