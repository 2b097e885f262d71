"""Bounded JSON: nesting depth is measured without recursion."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from carelink.api.bodies import controlled, depth


def _reference_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(json_values)
def test_depth_agrees_with_the_recursive_definition(value):
    assert depth(value) == _reference_depth(value)


def test_a_very_deep_value_costs_no_stack():
    value: object = []
    for _ in range(50_000):
        value = [value]
    assert depth(value) == 50_001


def _holds_control(value: object) -> bool:
    if isinstance(value, str):
        return any(ord(c) < 0x20 and c not in "\t\r\n" for c in value)
    if isinstance(value, dict):
        return any(_holds_control(k) or _holds_control(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_control(v) for v in value)
    return False


_texts = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=5)
_with_controls = st.recursive(
    st.none() | st.integers(-(2**62), 2**62) | _texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=20,
)


@given(_with_controls)
def test_a_body_holds_a_control_character_exactly_when_a_string_in_it_does(value):
    """The first look at the bytes (JSON must escape such a character) never misses one,
    and what it finds is confirmed in the parsed strings (a backslash before 'u0001'
    written as text is no control character)."""
    raw = orjson.dumps(value)
    assert controlled(raw, value) == _holds_control(value)
    assert not controlled(orjson.dumps("\\u0001 \\b \\f"), "\\u0001 \\b \\f")
