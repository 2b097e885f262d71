"""SMART Backend Services token exchange, with real keys and a real replay store."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from carelink.auth.backend_services import (
    ASSERTION_TYPE,
    Client,
    OAuthError,
    RegisteredJwks,
    TokenService,
    load_clients,
)
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.auth.tokens import TokenPolicy, validate
from carelink.errors import ConfigError
from carelink.storage import Database, ReplayStore

TOKEN_URL = "https://gw.test/auth/token"
FHIR_BASE = "https://gw.test/fhir"


class Registered:
    """A backend client with an RSA and an EC key registered."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "c-rsa"})
        self.ec = ECKey.generate_key("P-384", parameters={"kid": "c-ec"})
        public = KeySet([self.rsa, self.ec]).as_dict(private=False)
        self.client = Client(
            "analytics",
            KeySet.import_key_set(public),
            frozenset({"system/Patient.rs", "system/Observation.rs"}),
        )

    def assertion(
        self, key: str = "rsa", header: dict[str, Any] | None = None, **changes: Any
    ) -> str:
        signing = self.rsa if key == "rsa" else self.ec
        now = int(time.time())
        claims = {
            "iss": "analytics",
            "sub": "analytics",
            "aud": TOKEN_URL,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        }
        claims.update(changes)
        alg = "RS384" if key == "rsa" else "ES384"
        return jwt.encode(
            {"alg": alg, "kid": signing.kid, **(header or {})},
            {k: v for k, v in claims.items() if v is not None},
            signing,
            algorithms=[alg],
        )


@pytest.fixture
def service(database_url: str, tmp_path) -> Iterator[tuple[TokenService, Registered]]:
    db = Database(database_url)
    db.migrate()
    reg = Registered()
    svc = TokenService(
        {"analytics": reg.client},
        TOKEN_URL,
        FHIR_BASE,
        LocalIssuer(tmp_path / "issuer"),
        ReplayStore(db),
    )
    yield svc, reg
    db.dispose()


def form(assertion: str, scope: str = "system/Patient.rs") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
    }


@pytest.mark.parametrize("key", ["rsa", "ec"])
def test_a_good_assertion_gets_a_token_the_gateway_accepts(service, key, tmp_path):
    svc, reg = service
    answer = svc.exchange(form(reg.assertion(key), "system/Patient.rs system/Condition.rs"))
    assert answer["token_type"] == "bearer"
    assert answer["scope"] == "system/Patient.rs"  # only what is registered
    keys = KeySet.import_key_set(KeySet([svc.issuer.key]).as_dict(private=False))
    caller = validate(answer["access_token"], TokenPolicy({LOCAL_ISSUER: keys}, FHIR_BASE))
    assert caller.subject == "analytics"
    assert caller.scopes == frozenset({"system/Patient.rs"})


def test_a_replayed_jti_is_refused(service):
    svc, reg = service
    assertion = reg.assertion(jti="once-only")
    svc.exchange(form(assertion))
    with pytest.raises(OAuthError, match="used before") as err:
        svc.exchange(form(assertion))
    assert err.value.error == "invalid_client"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(time.time()) + 600}, "more than 5 minutes"),
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"sub": "someone-else"}, "iss and sub"),
        ({"aud": FHIR_BASE}, "token endpoint"),
        ({"jti": None}, "jti"),
        ({"iss": "stranger", "sub": "stranger"}, "unknown client"),
    ],
)
def test_bad_assertions_are_invalid_client(service, changes, reason):
    svc, reg = service
    with pytest.raises(OAuthError, match=reason) as err:
        svc.exchange(form(reg.assertion(**changes)))
    assert (err.value.error, err.value.status) == ("invalid_client", 401)


def test_a_key_outside_the_registration_is_refused_and_its_jku_never_fetched(service):
    svc, _reg = service
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"keys": []}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rogue = RSAKey.generate_key(2048, parameters={"kid": "c-rsa"})
        now = int(time.time())
        assertion = jwt.encode(
            {
                "alg": "RS384",
                "kid": "c-rsa",
                "jku": f"http://127.0.0.1:{server.server_port}/jwks.json",
            },
            {
                "iss": "analytics",
                "sub": "analytics",
                "aud": TOKEN_URL,
                "exp": now + 60,
                "jti": "rogue",
            },
            rogue,
            algorithms=["RS384"],
        )
        with pytest.raises(OAuthError, match="registered keys"):
            svc.exchange(form(assertion))
    finally:
        server.shutdown()
    assert hits == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"client_assertion_type": "secret"}, "invalid_request"),
        ({"client_assertion": ""}, "invalid_request"),
        ({"scope": "user/Patient.rs"}, "invalid_scope"),
        ({"scope": "system/Patient.sr"}, "invalid_scope"),
        ({"scope": "system/Encounter.rs"}, "invalid_scope"),
    ],
)
def test_malformed_requests(service, changes, error):
    svc, reg = service
    with pytest.raises(OAuthError) as err:
        svc.exchange({**form(reg.assertion()), **changes})
    assert err.value.error == error


class JwksServer:
    """A real HTTP server publishing a JWKS, counting what is asked of it."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                body = json.dumps(outer.keys.as_dict(private=False)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def by_url(database_url: str, tmp_path) -> Iterator[tuple[TokenService, Registered, JwksServer]]:
    db = Database(database_url)
    db.migrate()
    reg = Registered()
    published = JwksServer(KeySet([reg.rsa]))
    registry = tmp_path / "clients.json"
    registry.write_text(
        json.dumps([{"client_id": "analytics", "jwks_uri": published.url, "scope": "system/*.rs"}])
    )
    svc = TokenService(
        load_clients(registry),
        TOKEN_URL,
        FHIR_BASE,
        LocalIssuer(tmp_path / "issuer"),
        ReplayStore(db),
    )
    yield svc, reg, published
    published.close()
    db.dispose()


def test_keys_registered_by_url_are_fetched_once_and_cached(by_url):
    svc, reg, published = by_url
    for _ in range(3):
        assert svc.exchange(form(reg.assertion(), "system/Patient.rs"))["access_token"]
    assert published.hits == ["/jwks.json"]


def test_a_jku_outside_the_registered_url_is_never_fetched(by_url):
    svc, reg, published = by_url
    elsewhere = JwksServer(KeySet([reg.rsa, reg.ec]))
    try:
        # Signed with the EC key, which only the jku's server publishes.
        assertion = reg.assertion("ec", header={"jku": elsewhere.url})
        with pytest.raises(OAuthError, match="registered keys") as err:
            svc.exchange(form(assertion))
    finally:
        elsewhere.close()
    assert err.value.error == "invalid_client"
    assert elsewhere.hits == []
    assert published.hits == ["/jwks.json"]


def test_a_rotated_key_is_picked_up_from_the_registered_url(by_url):
    svc, reg, published = by_url
    svc.exchange(form(reg.assertion("rsa")))
    published.keys = KeySet([reg.rsa, reg.ec])  # the client adds its new key
    # Within a minute an unknown kid does not make the gateway fetch again...
    with pytest.raises(OAuthError, match="registered keys"):
        svc.exchange(form(reg.assertion("ec")))
    assert len(published.hits) == 1
    # ...after it, one fetch picks the new key up.
    jwks = svc.clients["analytics"].keys
    assert isinstance(jwks, RegisteredJwks)
    later = time.monotonic() + 61
    jwks.now = lambda: later  # its injected clock, a minute on
    assert svc.exchange(form(reg.assertion("ec")))["access_token"]
    assert len(published.hits) == 2


def test_an_unreachable_registered_url_is_invalid_client(by_url):
    svc, reg, published = by_url
    published.close()
    with pytest.raises(OAuthError, match="JWKS URL could not be read") as err:
        svc.exchange(form(reg.assertion()))
    assert (err.value.error, err.value.status) == ("invalid_client", 401)


@pytest.mark.parametrize(
    "entry",
    [
        {"client_id": "a", "scope": "system/*.rs", "jwks_uri": "http://keys.example.org/jwks"},
        {"client_id": "a", "scope": "system/*.rs"},
        {"client_id": "a", "scope": "system/*.rs", "jwks_uri": "https://x", "jwks": {"keys": []}},
    ],
)
def test_bad_registrations_are_refused_at_start(tmp_path, entry):
    registry = tmp_path / "clients.json"
    registry.write_text(json.dumps([entry]))
    with pytest.raises(ConfigError):
        load_clients(registry)
