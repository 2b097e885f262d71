"""A SMART Backend Services client built on Authlib gets a token from the gateway.

Authlib is the OAuth library an integrator is most likely to reach for in
Python. Its own client code builds the request here: ``prepare_token_request``
writes the ``client_credentials`` form and ``PrivateKeyJWT`` (RFC 7523) signs
and adds the client assertion, exactly as its OAuth2 sessions do before
sending. The form goes to the gateway's ``TokenService`` (the domain function
behind ``POST /auth/token``), so what is checked is the wire format both sides
agree on. (Authlib's httpx session wrapper is not used: Authlib 1.9 deprecates
it in favour of httpx2.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, KeySet, RSAKey

from carelink.auth.backend_services import Client, OAuthError, TokenService
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.auth.tokens import TokenPolicy, validate
from carelink.storage import Database, ReplayStore

TOKEN_URL = "https://gw.test/auth/token"
FHIR_BASE = "https://gw.test/fhir"
KEYS = {
    "RS384": RSAKey.generate_key(2048, parameters={"kid": "authlib-rsa"}),
    "ES384": ECKey.generate_key("P-384", parameters={"kid": "authlib-ec"}),
}


@pytest.fixture
def service(database_url: str, tmp_path) -> Iterator[TokenService]:
    db = Database(database_url)
    db.migrate()
    public = KeySet(list(KEYS.values())).as_dict(private=False)
    client = Client("analytics", KeySet.import_key_set(public), frozenset({"system/Patient.rs"}))
    yield TokenService(
        {"analytics": client},
        TOKEN_URL,
        FHIR_BASE,
        LocalIssuer(tmp_path / "issuer"),
        ReplayStore(db),
    )
    db.dispose()


def token_request(alg: str, lifetime: int | None, scope: str | None = None) -> dict[str, str]:
    """The form an Authlib client posts, set up as its docs show, with the key id and
    algorithm SMART needs; ``lifetime`` None keeps Authlib's default assertion lifetime."""
    claims = None if lifetime is None else {"exp": int(time.time()) + lifetime}
    auth = ClientAuth(
        "analytics",
        KEYS[alg],
        PrivateKeyJWT(TOKEN_URL, claims=claims, headers={"kid": KEYS[alg].kid}, alg=alg),
    )
    body = prepare_token_request("client_credentials", scope=scope)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    uri, _, body = auth.prepare("POST", TOKEN_URL, headers, body)
    assert uri == TOKEN_URL
    return dict(parse_qsl(body, strict_parsing=True))


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_an_authlib_private_key_jwt_client_gets_a_token_the_gateway_accepts(service, alg):
    token = service.exchange(token_request(alg, lifetime=240, scope="system/Patient.rs"))
    assert token["token_type"] == "bearer"
    assert token["scope"] == "system/Patient.rs"
    keys = KeySet.import_key_set(KeySet([service.issuer.key]).as_dict(private=False))
    caller = validate(token["access_token"], TokenPolicy({LOCAL_ISSUER: keys}, FHIR_BASE))
    assert caller.client_id == caller.subject == "analytics"
    assert caller.scopes == frozenset({"system/Patient.rs"})


def test_authlibs_default_one_hour_assertion_is_refused_as_smart_requires(service):
    """SMART Backend Services allows an assertion ``exp`` at most five minutes ahead;
    Authlib signs one for an hour unless told otherwise. The refusal says so."""
    with pytest.raises(OAuthError) as err:
        service.exchange(token_request("RS384", lifetime=None))
    assert err.value.error == "invalid_client"
    assert err.value.description == "assertion exp is more than 5 minutes ahead"
