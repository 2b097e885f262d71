"""The gateway in token mode: no patient data without a valid bearer token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import KeySet

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.auth.test_backend_services import Registered
from tests.integration.conftest import System
from tests.support.procs import free_port, running
from tests.support.tokens import ISSUER, Issuer, unsigned

BACKEND = Registered()


@pytest.fixture(scope="module")
def secured(system: System, tmp_path_factory) -> Iterator[tuple[str, Issuer]]:
    issuer = Issuer()
    jwks = tmp_path_factory.mktemp("keys") / "jwks.json"
    jwks.write_text(json.dumps(issuer.public_jwks()))
    clients = jwks.parent / "clients.json"
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": "analytics",
                    "scope": "system/Patient.rs system/Observation.rs",
                    "jwks": KeySet([BACKEND.rsa, BACKEND.ec]).as_dict(private=False),
                    "purpose": "TREAT",
                },
                {
                    "client_id": "planning",
                    "scope": "system/Patient.rs",
                    "jwks": KeySet([BACKEND.rsa, BACKEND.ec]).as_dict(private=False),
                },
            ]
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    env = {
        **system.env,
        "CARELINK_AUTH": "jwt",
        "CARELINK_ISSUER": ISSUER,
        "CARELINK_AUDIENCE": base,
        "CARELINK_JWKS": str(jwks),
        "CARELINK_ISSUER_KEYS": str(jwks.parent / "local-issuer"),
        "CARELINK_CLIENTS": str(clients),
    }
    with running(["serve", "--port", str(port)], f"{base}/metadata", env):
        yield base, issuer


def _lookup(system: System, base: str, headers: dict[str, str]) -> httpx.Response:
    nhs = system.population[0].nhs_number
    return httpx.get(
        f"{base}/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs}"}, headers=headers
    )


def test_metadata_needs_no_token(secured):
    base, _ = secured
    assert httpx.get(f"{base}/metadata").status_code == 200


def test_a_valid_token_reads_patient_data(system, secured):
    base, issuer = secured
    token = issuer.token(aud=base)
    r = _lookup(system, base, {"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["total"] == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda base, i: None,
        lambda base, i: i.token(aud=base, exp=int(time.time()) - 600),
        lambda base, i: i.token(aud=base, nbf=int(time.time()) + 600),
        lambda base, i: i.token(),  # audience is another gateway's
        lambda base, i: i.token(aud=base, iss="https://evil.test"),
        lambda base, i: unsigned(i.claims(aud=base)),
        lambda base, i: i.hs256_with_public_key(),
        lambda base, i: i.token("foreign", aud=base),
    ],
    ids=[
        "no-token",
        "expired",
        "not-yet-valid",
        "wrong-aud",
        "foreign-issuer",
        "alg-none",
        "hs256-public-key",
        "unknown-signer",
    ],
)
def test_no_patient_data_without_a_valid_token(system, secured, make):
    base, issuer = secured
    token = make(base, issuer)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for r in (
        _lookup(system, base, headers),
        httpx.get(f"{base}/Patient/anything/$everything", headers=headers),
    ):
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        body = r.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["code"] == "login"
        if token:
            assert token not in r.text


def test_smart_configuration_names_the_token_endpoint(secured):
    base, _ = secured
    conf = httpx.get(f"{base}/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == base.removesuffix("/fhir") + "/auth/token"
    assert conf["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "client-confidential-asymmetric" in conf["capabilities"]
    # The CapabilityStatement's security section says the same.
    security = httpx.get(f"{base}/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (uris,) = security["extension"]
    assert uris["url"].endswith("/oauth-uris")
    assert uris["extension"] == [{"url": "token", "valueUri": conf["token_endpoint"]}]
    assert "AuditEvent" in security["description"]


def test_a_backend_service_gets_a_token_but_not_the_live_clinical_api(system, secured):
    """Backend services serve $export: by default (policy systemScopesOnLiveApi false)
    their system/ scopes open nothing on the live API."""
    base, _ = secured
    token_url = base.removesuffix("/fhir") + "/auth/token"
    assertion = BACKEND.assertion(aud=token_url)
    r = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = r.json()["access_token"]
    refused = _lookup(system, base, {"Authorization": f"Bearer {token}"})
    assert refused.status_code == 403
    assert "no scope allows search of Patient" in refused.text
    again = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"


def test_a_secondary_use_purpose_gets_no_patient_data_from_the_live_api(system, secured):
    """A backend client registered for operations (HOPERAT) is refused: extracts serve it."""
    base, _ = secured
    token_url = base.removesuffix("/fhir") + "/auth/token"
    r = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": BACKEND.assertion(aud=token_url, iss="planning", sub="planning"),
        },
    )
    assert r.status_code == 200, r.text
    refused = _lookup(system, base, {"Authorization": f"Bearer {r.json()['access_token']}"})
    assert refused.status_code == 403
