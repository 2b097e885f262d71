"""JSON values for property tests of the FHIR walks: leaves of every kind a walk meets
(None, booleans, numbers, texts that need repairing and texts that do not) in lists and
in dicts keyed by element names."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def json_values(
    keys: Sequence[str], texts: Sequence[str], max_leaves: int
) -> st.SearchStrategy[Any]:
    """Leaves, lists and dicts (keys from ``keys``), with ``texts`` among the strings."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=False),
        st.sampled_from(list(texts)),
        st.text(string.printable, max_size=5),
    )
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(list(keys)), inner, max_size=5)
        ),
        max_leaves=max_leaves,
    )
