"""The caller's identity is the full principal, and scopes must fit the token's context."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.auth import Principal
from carelink.auth.tokens import TokenPolicy, principal_from, validate
from carelink.errors import Unauthenticated
from tests.support.tokens import AUDIENCE, ISSUER, Issuer


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def policy(issuer: Issuer) -> TokenPolicy:
    return TokenPolicy({ISSUER: issuer.keys()}, AUDIENCE)


def test_the_identity_is_issuer_subject_organisation_role_and_client(issuer, policy):
    caller = validate(issuer.token(), policy)
    assert caller.issuer == ISSUER
    same = [
        validate(issuer.token(organisation="RYY02"), policy),
        validate(issuer.token(role="R0001"), policy),
    ]
    assert all(other.subject == caller.subject for other in same)
    assert all(other.identity != caller.identity for other in same)
    assert all(other.person == caller.person for other in same)
    elsewhere = Principal("clinician-1", "R8000", "RXX01", frozenset(), issuer="https://other")
    assert elsewhere.identity != caller.identity


def test_a_patient_scope_needs_a_patient_context(issuer, policy):
    with pytest.raises(Unauthenticated, match="patient context"):
        validate(issuer.token(scope="patient/*.rs", role=None), policy)
    citizen = validate(issuer.token(scope="patient/*.rs", patient="p1"), policy)
    assert citizen.patient == "p1"


def test_a_patient_token_carries_no_clinical_role_whatever_it_claims(issuer, policy):
    citizen = validate(issuer.token(patient="p1", role="R8000", organisation="RXX01"), policy)
    assert (citizen.role, citizen.organisation) == (None, None)


@pytest.mark.parametrize(
    "claims",
    [
        {},  # a clinician
        {"client_id": "other-client"},  # a user token of some app
        {"client_id": "clinician-1"},  # sub == client id, but a role and organisation
        {"client_id": "clinician-1", "role": None},  # still an organisation
    ],
)
def test_system_scopes_only_in_a_backend_services_token(issuer, policy, claims):
    with pytest.raises(Unauthenticated, match="backend-services"):
        validate(issuer.token(scope="system/*.rs", **claims), policy)


def test_a_backend_services_token_is_the_client_itself(issuer, policy):
    token = issuer.token(
        sub="analytics", client_id="analytics", role=None, organisation=None, scope="system/*.rs"
    )
    caller = validate(token, policy)
    assert caller.backend
    assert not validate(issuer.token(client_id="clinician-1"), policy).backend


@pytest.mark.parametrize(
    "claims",
    [{"sub": 7}, {"sub": ""}, {"role": ["R8000"]}, {"scope": ["user/*.rs"]}, {"patient": {}}],
)
def test_claims_of_the_wrong_type_are_refused(claims):
    base = {"sub": "x", "scope": "user/*.rs"}
    with pytest.raises(Unauthenticated):
        principal_from({**base, **claims}, ISSUER)


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(header=json_values, payload=json_values, signature=st.text(max_size=20))
def test_any_malformed_token_is_unauthenticated_never_another_error(header, payload, signature):
    policy = TokenPolicy({}, AUDIENCE)
    token = f"{_b64(header)}.{_b64(payload)}.{signature}"
    with pytest.raises(Unauthenticated):
        validate(token, policy)
