"""SMART scopes: v2 grammar, v1 mapped, malformed refused."""

from __future__ import annotations

import pytest

from carelink.auth.scopes import Scope, ScopeError, granting, parse, parse_all, within


@pytest.mark.parametrize(
    ("text", "perms"),
    [
        ("patient/Observation.rs", {"r", "s"}),
        ("user/*.cruds", set("cruds")),
        ("system/Patient.r", {"r"}),
        ("patient/Observation.read", {"r", "s"}),
        ("user/*.write", {"c", "u", "d"}),
        ("user/*.*", set("cruds")),
    ],
)
def test_permissions(text, perms):
    scope = parse(text)
    assert scope is not None
    assert scope.perms == frozenset(perms)


@pytest.mark.parametrize("text", ["user/*.read", "user/*.rs", "patient/Observation.rus"])
def test_read_search_and_update_scopes_never_grant_delete(text):
    scope = parse(text)
    assert scope is not None
    assert not scope.covers("Observation", "d")


def test_dus_is_out_of_order_so_it_grants_nothing_at_all():
    with pytest.raises(ScopeError, match="subsequence"):
        parse("patient/Observation.dus")


@pytest.mark.parametrize(
    "text",
    [
        "patient/Observation.sr",
        "patient/Observation.rr",
        "user/*.x",
        "patient/Observation.",
        "person/Observation.rs",
        "patient/observation.rs",
        "patient/Observation.read?category=x",
        "patient/Observation.rs?category=",
    ],
)
def test_malformed_or_out_of_order_scopes_are_refused_never_guessed(text):
    with pytest.raises(ScopeError):
        parse(text)


def test_non_resource_scopes_are_ignored():
    assert parse("openid") is None
    assert parse("launch") is None
    assert parse_all(frozenset({"openid", "fhirUser", "user/Patient.rs"})) == (
        Scope("user", "Patient", frozenset("rs")),
    )


def test_granular_scope_keeps_its_filter():
    scope = parse(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
        "observation-category|laboratory"
    )
    assert scope is not None
    assert scope.filters == (
        ("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
    )


def test_granting_picks_the_scopes_for_the_type_and_interaction():
    scopes = parse_all(frozenset({"user/Observation.rs", "user/Patient.r"}))
    assert [s.resource for s in granting(scopes, "Observation", "s")] == ["Observation"]
    assert granting(scopes, "Patient", "s") == ()
    assert granting(scopes, "Condition", "r") == ()


@pytest.mark.parametrize(
    ("asked", "allowed", "inside"),
    [
        ("system/Patient.rs", "system/*.rs", True),
        ("system/Patient.r", "system/Patient.rs", True),
        ("system/Patient.rs", "system/Patient.r", False),
        ("system/*.rs", "system/Patient.rs", False),
        ("user/Patient.rs", "system/*.rs", False),
        ("system/Observation.rs?category=laboratory", "system/Observation.rs", True),
        ("system/Observation.rs", "system/Observation.rs?category=laboratory", False),
        (
            "system/Observation.rs?category=laboratory&status=final",
            "system/Observation.rs?category=laboratory",
            True,
        ),
        ("system/Observation.d", "system/Observation.read", False),
    ],
)
def test_a_requested_scope_is_within_a_registered_one_only_if_it_grants_no_more(
    asked, allowed, inside
):
    a, b = parse(asked), parse(allowed)
    assert a is not None
    assert b is not None
    assert within(a, b) is inside
