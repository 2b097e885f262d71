"""Real keys and real signed tokens for the authentication tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

ISSUER = "https://issuer.test"
AUDIENCE = "https://gateway.test/fhir"


class Issuer:
    """An RS384 and an ES384 key under one issuer, and a foreign key nobody trusts."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})
        self.ec = ECKey.generate_key("P-384", parameters={"kid": "ec-1", "use": "sig"})
        self.foreign = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})

    def public_jwks(self) -> dict[str, Any]:
        """What the gateway is configured with."""
        return KeySet([self.rsa, self.ec]).as_dict(private=False)

    def keys(self) -> KeySet:
        return KeySet.import_key_set(self.public_jwks())

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        out = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "clinician-1",
            "iat": now,
            "exp": now + 300,
            "role": "R8000",
            "organisation": "RXX01",
            "purpose_of_use": "TREAT",
            "scope": "user/*.rs",
        }
        out.update(changes)
        return {k: v for k, v in out.items() if v is not None}

    def token(self, key: str = "rsa", alg: str | None = None, **changes: Any) -> str:
        signing = {"rsa": self.rsa, "ec": self.ec, "foreign": self.foreign}[key]
        alg = alg or ("ES384" if key == "ec" else "RS384")
        return jwt.encode(
            {"alg": alg, "kid": signing.kid}, self.claims(**changes), signing, algorithms=[alg]
        )

    def backend(self, aud: str, client: str, **claims: Any) -> str:
        """A backend-services token: the client is the subject, with no role,
        organisation or patient (``system/Patient.rs`` for direct care unless told)."""
        claims.setdefault("scope", "system/Patient.rs")
        claims.setdefault("purpose_of_use", "TREAT")
        return self.token(
            aud=aud, sub=client, client_id=client, role=None, organisation=None, **claims
        )

    def hs256_with_public_key(self) -> str:
        """The classic confusion attack: HMAC 'signed' with the RSA public key's bytes
        (made by hand: joserfc itself refuses to use a public key as an HMAC secret)."""
        head = _b64({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"})
        body = _b64(self.claims())
        secret = self.rsa.as_pem(private=False)
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token."""
    return f"{_b64({'alg': 'none', 'kid': 'rsa-1'})}.{_b64(claims)}."
