"""SMART Backend Services token exchange, with real keys and a real replay store."""

from __future__ import annotations

import http.server
import json
import math
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
    CLOCK_SKEW,
    MAX_ASSERTION_LIFETIME,
    Client,
    OAuthError,
    RegisteredJwks,
    TokenService,
    deid_profile_for,
    deid_profiles_within,
    load_clients,
)
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.auth.tokens import TokenPolicy, validate
from carelink.errors import AccessDenied, ConfigError
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


@pytest.mark.parametrize(
    ("jti", "taken"),
    [("j" * 200, True), ("j" * 201, False), ("nul\x00inside", False), ("tab\tinside", False)],
)
def test_a_jti_is_taken_whole_or_refused_as_a_client_error(service, jti, taken):
    """The jti is stored to refuse replays: one the store holds is taken (and refused the
    second time); one it could not hold (PostgreSQL refuses text over the column or with
    a NUL) is the client's error, 401, never a 500."""
    svc, reg = service
    assertion = reg.assertion(jti=jti)
    if taken:
        svc.exchange(form(assertion))
        with pytest.raises(OAuthError, match="used before"):
            svc.exchange(form(assertion))
        return
    with pytest.raises(OAuthError, match="jti must be text") as err:
        svc.exchange(form(assertion))
    assert (err.value.error, err.value.status) == ("invalid_client", 401)


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
        # exp as seconds from now, made when the test runs (not when it is collected:
        # a long run would otherwise age them)
        ({"exp_in": 600}, "more than 5 minutes"),  # beyond 300 s + skew
        ({"exp_in": -CLOCK_SKEW - 10}, "expired"),
        ({"sub": "someone-else"}, "iss and sub"),
        ({"aud": FHIR_BASE}, "token endpoint"),
        ({"jti": None}, "jti"),
        ({"iss": "stranger", "sub": "stranger"}, "unknown client"),
    ],
)
def test_bad_assertions_are_invalid_client(service, changes, reason):
    svc, reg = service
    if "exp_in" in changes:
        changes = {"exp": int(time.time()) + changes["exp_in"]}
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


KEYS = KeySet([RSAKey.generate_key(2048, parameters={"kid": "reg"})]).as_dict(private=False)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {"client_id": "a", "scope": "system/*.rs", "jwks_uri": "http://keys.example.org/j"},
            "must be https",
        ),
        ({"client_id": "a", "scope": "system/*.rs"}, "exactly one of jwks and jwks_uri"),
        (
            {"client_id": "a", "scope": "system/*.rs", "jwks_uri": "https://x", "jwks": KEYS},
            "exactly one of jwks and jwks_uri",
        ),
        ({"client_id": "a", "jwks": KEYS}, "needs a scope"),
        (
            {"client_id": "a", "scope": "system/*.rs", "jwks": KEYS, "deid_profile": "raw"},
            "deid_profile 'raw'; expected one of pseudonymised, anonymised",
        ),
        (
            {"client_id": "a", "scope": "system/*.rs", "jwks": KEYS, "deid_profile": None},
            "deid_profile None",
        ),
        (
            {"client_id": "a", "scope": "system/*.rs", "jwks": KEYS, "deidProfile": "anonymised"},
            "unknown field 'deidProfile'",
        ),
    ],
)
def test_bad_registrations_are_refused_at_start_in_one_line_naming_file_and_client(
    tmp_path, entry, says
):
    registry = tmp_path / "clients.json"
    registry.write_text(json.dumps([entry]))
    with pytest.raises(ConfigError) as err:
        load_clients(registry)
    message = str(err.value)
    assert message.startswith(f"{registry}: client 'a'")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not json", "not a valid client registry"),
        ('{"client_id": "a"}', "a JSON list of registrations"),
        ('[{"scope": "system/*.rs"}]', "every registration needs a client_id"),
    ],
)
def test_a_registry_that_is_not_a_list_of_registrations_is_refused(tmp_path, content, says):
    registry = tmp_path / "clients.json"
    registry.write_text(content)
    with pytest.raises(ConfigError, match=says):
        load_clients(registry)


def test_a_client_registered_twice_is_refused(tmp_path):
    registry = tmp_path / "clients.json"
    entry = {"client_id": "a", "scope": "system/*.rs", "jwks": KEYS}
    registry.write_text(json.dumps([entry, entry]))
    with pytest.raises(ConfigError, match="client 'a' is registered twice"):
        load_clients(registry)


def test_the_deid_profile_is_read_from_the_registration_and_defaults_to_anonymised(tmp_path):
    registry = tmp_path / "clients.json"
    base = {"scope": "system/*.rs", "jwks": KEYS, "purpose": "HRESCH"}
    registry.write_text(
        json.dumps(
            [
                {"client_id": "research", "deid_profile": "pseudonymised", **base},
                {"client_id": "dashboard", "client_name": "Dashboards", **base},
                {"client_id": "planning", "deid_profile": "anonymised", **base},
            ]
        )
    )
    clients = load_clients(registry)
    assert {c: clients[c].deid_profile for c in clients} == {
        "research": "pseudonymised",
        "dashboard": "anonymised",
        "planning": "anonymised",
    }


def test_an_agreement_covers_its_profile_and_any_less_identifying_one():
    assert deid_profiles_within("pseudonymised") == ("pseudonymised", "anonymised", "aggregate")
    assert deid_profiles_within("anonymised") == ("anonymised", "aggregate")
    assert deid_profiles_within("aggregate") == ("aggregate",)


@pytest.mark.parametrize(
    ("agreed", "asked", "gets"),
    [
        ("pseudonymised", None, "pseudonymised"),
        ("pseudonymised", "pseudonymised", "pseudonymised"),
        ("pseudonymised", "anonymised", "anonymised"),
        ("anonymised", None, "anonymised"),
        ("anonymised", "anonymised", "anonymised"),
        ("anonymised", "aggregate", "aggregate"),
        (None, None, "anonymised"),  # no registration here: no agreement
        (None, "anonymised", "anonymised"),
        ("anonymised", "raw", "raw"),  # not a profile: the extract's own check refuses it
    ],
)
def test_an_extract_gets_the_agreed_profile_or_a_less_identifying_one_asked_for(
    agreed, asked, gets
):
    assert deid_profile_for(agreed, asked) == gets


@pytest.mark.parametrize("agreed", ["anonymised", None])
def test_a_profile_more_identifying_than_the_agreement_is_access_denied(agreed):
    with pytest.raises(AccessDenied, match=r"more identifying .* agreement \(anonymised\)"):
        deid_profile_for(agreed, "pseudonymised")


# --- clock skew ---------------------------------------------------------------------


class Clock:
    """The token service's clock, set by the test."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


NOW = 1_790_000_000  # a whole second; tests add fractions to the gateway's clock


@pytest.fixture
def clocked(database_url: str, tmp_path) -> Iterator[tuple[TokenService, Registered, Clock]]:
    db = Database(database_url)
    db.migrate()
    reg = Registered()
    clock = Clock(NOW)
    svc = TokenService(
        {"analytics": reg.client},
        TOKEN_URL,
        FHIR_BASE,
        LocalIssuer(tmp_path / "issuer"),
        ReplayStore(db),
        now=clock,
    )
    yield svc, reg, clock
    db.dispose()


@pytest.mark.parametrize(
    ("exp_after_now", "accepted"),
    [
        (MAX_ASSERTION_LIFETIME, True),
        (MAX_ASSERTION_LIFETIME + 0.9, True),  # a client that rounds up, then adds 5 minutes
        (MAX_ASSERTION_LIFETIME + CLOCK_SKEW, True),
        (MAX_ASSERTION_LIFETIME + CLOCK_SKEW + 5, False),
        (1, True),
        (-5, True),  # just expired by a clock a few seconds ahead of the client's
        (-CLOCK_SKEW, True),
        (-CLOCK_SKEW - 5, False),
    ],
)
def test_exp_is_judged_with_the_stated_clock_skew(clocked, exp_after_now, accepted):
    """The assertion's exp is a whole second (as clients send it); the gateway's clock
    is set so that exp lies exactly ``exp_after_now`` seconds from it."""
    svc, reg, clock = clocked
    clock.at = NOW - exp_after_now
    assertion = reg.assertion(exp=NOW)
    if accepted:
        assert svc.exchange(form(assertion))["access_token"]
    else:
        reason = "more than 5 minutes" if exp_after_now > 0 else "expired"
        with pytest.raises(OAuthError, match=reason) as err:
            svc.exchange(form(assertion))
        assert (err.value.error, err.value.status) == ("invalid_client", 401)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize(
    ("ahead", "accepted"), [(0, True), (CLOCK_SKEW, True), (CLOCK_SKEW + 5, False)]
)
def test_nbf_and_iat_may_be_ahead_of_the_gateway_by_the_clock_skew_only(
    clocked, claim, ahead, accepted
):
    svc, reg, _clock = clocked
    assertion = reg.assertion(exp=NOW + 200, **{claim: NOW + ahead})
    if accepted:
        assert svc.exchange(form(assertion))["access_token"]
    else:
        with pytest.raises(OAuthError, match=f"{claim} is in the future"):
            svc.exchange(form(assertion))


@pytest.mark.parametrize("value", ["soon", True, None])
def test_exp_must_be_a_number(clocked, value):
    svc, reg, _clock = clocked
    with pytest.raises(OAuthError, match="expired or has no exp"):
        svc.exchange(form(reg.assertion(exp=value)))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.75, 0.999])
@pytest.mark.parametrize("latency", [0.0, 0.2])
def test_the_smart_bulk_data_client_timing_is_accepted_at_any_fraction_of_a_second(
    clocked, fraction, latency
):
    """The SMART bulk-data-client signs ``exp = Math.round(Date.now() / 1000) + 300`` and
    (jsonwebtoken's default) ``iat = Math.floor(Date.now() / 1000)``: when the client's
    clock is past the half second, exp is up to a second beyond now + 300. Reproduced here
    for clocks that agree, at every part of the second, as it arrives after ``latency``."""
    svc, reg, clock = clocked
    client_time = NOW + fraction
    assertion = reg.assertion(
        exp=math.floor(client_time + 0.5) + MAX_ASSERTION_LIFETIME,  # Math.round
        iat=math.floor(client_time),
    )
    clock.at = client_time + latency
    answer = svc.exchange(form(assertion))
    assert answer["token_type"] == "bearer"


def test_a_replayed_assertion_is_refused_for_as_long_as_it_could_be_accepted(clocked):
    svc, reg, clock = clocked
    assertion = reg.assertion(exp=NOW + 10, jti="late-replay")
    svc.exchange(form(assertion))
    clock.at = NOW + 10 + CLOCK_SKEW - 1  # past exp, inside the tolerance
    with pytest.raises(OAuthError, match="used before"):
        svc.exchange(form(assertion))
