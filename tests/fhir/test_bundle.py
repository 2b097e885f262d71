"""A searchset Bundle holds every match, include and outcome it is given, in that order,
however they are given: lists, tuples, or generators walked once (``searchset`` skips
walking the usual empty includes and outcomes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from carelink.fhir import searchset
from carelink.fhir.bundle import entry

Json = dict[str, Any]


def _resources(kind: str) -> Any:
    return st.lists(st.integers(0, 99).map(lambda i: {"resourceType": kind, "id": f"{kind}{i}"}))


shapes: list[Callable[[list[Json]], Iterable[Json]]] = [list, tuple, iter, lambda r: (x for x in r)]


@given(
    _resources("Patient"),
    _resources("Observation"),
    _resources("OperationOutcome"),
    st.sampled_from(shapes),
    st.sampled_from(shapes),
    st.booleans(),
)
def test_every_match_include_and_outcome_is_an_entry_in_order(
    matches, includes, outcomes, include_shape, outcome_shape, entry_of
):
    made = searchset(
        "http://gw/fhir",
        matches,
        total=len(matches),
        links={"self": "http://gw/fhir/Patient"},
        includes=include_shape(includes),
        outcomes=outcome_shape(outcomes),
        entry_of=(lambda base, r, mode: entry(base, r, mode)) if entry_of else None,
    )
    assert made["entry"] == [
        *(entry("http://gw/fhir", r, "match") for r in matches),
        *(entry("http://gw/fhir", r, "include") for r in includes),
        *({"resource": o, "search": {"mode": "outcome"}} for o in outcomes),
    ]
    assert made["total"] == len(matches)
    assert made["link"] == [{"relation": "self", "url": "http://gw/fhir/Patient"}]
