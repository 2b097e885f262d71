"""Bounded JSON: nesting depth is measured without recursion."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from carelink.api.bodies import depth


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
