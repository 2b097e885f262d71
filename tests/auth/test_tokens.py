"""Bearer token validation with real keys and real signatures."""

from __future__ import annotations

import time

import pytest

from carelink.auth.tokens import TokenPolicy, bearer, validate
from carelink.errors import Unauthenticated
from tests.support.tokens import AUDIENCE, ISSUER, Issuer, unsigned


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def policy(issuer: Issuer) -> TokenPolicy:
    return TokenPolicy({ISSUER: issuer.keys()}, AUDIENCE)


@pytest.mark.parametrize("key", ["rsa", "ec"])
def test_a_valid_token_gives_the_caller_it_speaks_for(issuer, policy, key):
    caller = validate(issuer.token(key), policy)
    assert caller.subject == "clinician-1"
    assert (caller.role, caller.organisation, caller.purpose) == ("R8000", "RXX01", "TREAT")
    assert caller.scopes == frozenset({"user/*.rs"})


def test_audience_may_be_a_list(issuer, policy):
    assert validate(issuer.token(aud=["other", AUDIENCE]), policy).subject == "clinician-1"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: i.token(exp=int(time.time()) - 120), "expired"),
        (lambda i: i.token(nbf=int(time.time()) + 600), "not valid yet"),
        (lambda i: i.token(exp=None), "no expiry"),
        (lambda i: i.token(aud="https://elsewhere.test/fhir"), "not for this gateway"),
        (lambda i: i.token(iss="https://evil.test"), "issuer"),
        (lambda i: i.token("foreign"), "signature"),
    ],
    ids=["expired", "not-yet-valid", "no-exp", "wrong-aud", "foreign-issuer", "foreign-key"],
)
def test_tokens_that_must_not_pass(issuer, policy, make, reason):
    with pytest.raises(Unauthenticated, match=reason):
        validate(make(issuer), policy)


def test_alg_none_is_refused(issuer, policy):
    with pytest.raises(Unauthenticated, match="algorithm 'none'"):
        validate(unsigned(issuer.claims()), policy)


def test_hs256_signed_with_the_public_key_is_refused(issuer, policy):
    with pytest.raises(Unauthenticated, match="algorithm 'HS256'"):
        validate(issuer.hs256_with_public_key(), policy)


def test_an_unknown_key_id_is_refused_without_fetching_anything(issuer, policy):
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    stranger = RSAKey.generate_key(2048, parameters={"kid": "who-knows"})
    token = jwt.encode(
        {"alg": "RS384", "kid": "who-knows", "jku": "https://evil.test/jwks"},
        issuer.claims(),
        stranger,
        algorithms=["RS384"],
    )
    with pytest.raises(Unauthenticated, match="key id"):
        validate(token, policy)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_missing_or_malformed_authorization_header(header):
    with pytest.raises(Unauthenticated):
        bearer(header)


def test_garbage_is_not_a_jwt(policy):
    with pytest.raises(Unauthenticated, match="not a JWT"):
        validate("not-a-token", policy)


def test_the_verifier_reuses_a_verified_token_but_never_past_its_expiry(issuer, policy):
    from carelink.auth.tokens import Verifier

    clock = [time.time()]
    verify = Verifier(policy, now=lambda: clock[0])
    token = issuer.token(exp=int(clock[0]) + 60)
    assert verify(token).subject == "clinician-1"
    assert verify(token).subject == "clinician-1"
    clock[0] += 60 + policy.leeway + 1
    with pytest.raises(Unauthenticated, match="expired"):
        verify(token)


def test_the_verifier_does_not_remember_failures(issuer, policy):
    from carelink.auth.tokens import Verifier

    verify = Verifier(policy)
    bad = issuer.token(aud="https://elsewhere.test/fhir")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            verify(bad)
