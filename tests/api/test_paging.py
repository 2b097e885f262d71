"""The pure parts of paging at the HTTP edge: cursor owners and the missing-sources header."""

from __future__ import annotations

from dataclasses import replace

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.api.paging import content_version, missing, outcome, owner
from carelink.auth import Principal
from carelink.federation.fanout import SourceResult
from carelink.federation.record import Federated, source_outcome
from carelink.fhir.jsonio import Encodings
from carelink.storage import PersonRow

NAMES = ["gp", "acute", "community", "social-care"]
STATUSES = ["ok", "timeout", "error", "circuit-open", "not-known"]

results = st.lists(
    st.builds(SourceResult, st.sampled_from(NAMES), st.sampled_from(STATUSES), st.just(1.0)),
    unique_by=lambda r: r.source,
)


@given(results=results, hidden=st.frozensets(st.sampled_from(NAMES)))
def test_the_header_names_exactly_the_failed_sources_consent_does_not_hide(results, hidden):
    items = missing(results, hidden)
    named = {i.split(";")[0] for i in items}
    failed = {r.source for r in results if r.status in ("timeout", "error", "circuit-open")}
    assert named == failed - hidden
    assert all(i == f"{i.split(';')[0]};status={i.split('=')[1]}" for i in items)


ALICE = Principal("alice", "R8000", "RXX01", frozenset({"user/*.rs"}), "TREAT")


def test_a_cursor_owner_is_the_same_caller_in_the_same_capacity():
    assert owner(ALICE) == owner(replace(ALICE))
    others = [
        replace(ALICE, subject="bob"),
        replace(ALICE, role="R8001"),
        replace(ALICE, organisation="RYY02"),
        replace(ALICE, scopes=frozenset({"user/Encounter.rs"})),
        replace(ALICE, purpose="ETREAT"),
        replace(ALICE, patient="p1"),
    ]
    assert len({owner(o) for o in others} | {owner(ALICE)}) == len(others) + 1


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-9, 9), st.text("ab", max_size=2)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text("ab", max_size=2), inner, max_size=2)
    ),
    max_leaves=6,
)
SHOWN = st.lists(
    st.dictionaries(st.sampled_from(["id", "code", "status"]), JSONISH, max_size=3), max_size=3
)


@settings(deadline=None)  # a shared, loaded machine: no per-example time limit
@given(a=SHOWN, b=SHOWN, encode_a=st.booleans(), encode_b=st.booleans())
def test_the_content_version_is_the_same_exactly_when_the_json_shown_is(a, b, encode_a, encode_b):
    """With or without the record's JSON made beforehand (``Encodings``), the version moves
    exactly when the JSON of what is shown moves."""
    version_a = content_version(a, [], [], Encodings(a) if encode_a else None)
    version_b = content_version(b, [], [], Encodings(b) if encode_b else None)
    assert (version_a == version_b) == (orjson.dumps(a) == orjson.dumps(b))


INCLUDES = st.lists(
    st.dictionaries(st.sampled_from(["id", "recorded", "target"]), JSONISH, max_size=3), max_size=3
)


@settings(deadline=None)
@given(a=INCLUDES, b=INCLUDES, encode_a=st.booleans(), encode_b=st.booleans())
def test_the_content_version_moves_with_the_includes_but_never_their_recorded(
    a, b, encode_a, encode_b
):
    """The includes (the record's Provenance, their JSON less ``recorded`` made once when
    they are members of the record's ``Encodings``) move the version exactly when their
    JSON without ``recorded`` moves: asked twice, members or not. Fails when a member's
    kept JSON is another's, or ``recorded`` is hashed."""

    def known(values: list[dict]) -> Encodings:
        enc = Encodings()
        for v in values:
            enc.add(v)
        return enc

    enc_a = known(a) if encode_a else None
    version_a = content_version([], a, [], enc_a)
    assert content_version([], a, [], enc_a) == version_a
    version_b = content_version([], b, [], known(b) if encode_b else None)
    stable = [[{k: v for k, v in r.items() if k != "recorded"} for r in x] for x in (a, b)]
    assert (version_a == version_b) == (orjson.dumps(stable[0]) == orjson.dumps(stable[1]))


UKCORE_OUTCOME = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-OperationOutcome"
PERSON = PersonRow("p1", None, "D", "O", "d", "o", None, None, None, b"{}", "1")


@given(results=results, hidden=st.frozensets(st.sampled_from(NAMES)))
def test_an_outcome_with_sources_hidden_has_the_shape_of_one_without(results, hidden):
    """No observable of the outcome but the hidden sources' own issues depends on
    consent having hidden any: the record's outcome claims UK Core's profile (as
    ``SharedRecord`` shapes it), and the outcome with sources hidden claims it alike,
    its issues those of the sources shown. Fails when hiding a source drops the claim."""
    claimed = {**source_outcome(results), "meta": {"profile": [UKCORE_OUTCOME]}}
    fed = Federated(PERSON, (), [], [], claimed, tuple(results), "tag")
    shown = [r for r in results if r.source not in hidden]
    got = outcome(fed, hidden)
    assert got == {**source_outcome(shown), "meta": {"profile": [UKCORE_OUTCOME]}}
    assert list(got) == list(outcome(fed, frozenset()))  # the same members, in order
