"""Bearer token validation: signed JWTs from a configured issuer, checked against its JWKS.

JOSE is done by joserfc (the successor to ``authlib.jose``, by the same
authors, which now warns that its old module is deprecated). What is checked,
in order, so the first failure is the one reported:

1. the header's ``alg`` is on the allow-list (asymmetric only: never ``none``,
   never HS*, so a public key can never be used as an HMAC secret);
2. the ``kid`` names a key in the issuer's key set (no key is ever fetched
   from a ``jku``/``x5u`` the token points at);
3. the signature;
4. ``iss`` is the configured issuer, ``aud`` contains the gateway's base URL;
5. ``exp`` and ``nbf`` with a small leeway; ``exp`` is required.
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from carelink.auth.principal import Principal
from carelink.errors import Unauthenticated

ALLOWED_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256", "PS384")


@dataclass(frozen=True)
class TokenPolicy:
    """Whom the gateway trusts (issuer -> its public keys), and how strictly."""

    issuers: Mapping[str, KeySet]
    audience: str
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    leeway: int = 30

    def issuer_of(self, kid: object) -> str | None:
        """The trusted issuer holding key ``kid``."""
        for issuer, keys in self.issuers.items():
            if any(k.kid == kid for k in keys.keys):
                return issuer
        return None


def _header(token: str) -> dict[str, Any]:
    try:
        head = token.split(".")[0]
        return dict(orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Unauthenticated("the bearer token is not a JWT") from exc


def validate(token: str, policy: TokenPolicy, now: Callable[[], float] = time.time) -> Principal:
    """The caller a token speaks for, or ``Unauthenticated`` saying why not."""
    header = _header(token)
    alg = header.get("alg")
    if alg not in policy.algorithms:
        raise Unauthenticated(f"token algorithm {alg!r} is not accepted")
    issuer = policy.issuer_of(header.get("kid"))
    if issuer is None:
        raise Unauthenticated("token key id is not one of the issuer's keys")
    try:
        decoded = jwt.decode(token, policy.issuers[issuer], algorithms=list(policy.algorithms))
    except JoseError as exc:
        raise Unauthenticated("token signature does not verify") from exc
    claims = decoded.claims
    if claims.get("iss") != issuer:
        raise Unauthenticated("token is from an issuer the gateway does not trust")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if policy.audience not in audiences:
        raise Unauthenticated("token is not for this gateway (aud)")
    t = now()
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float):
        raise Unauthenticated("token has no expiry")
    if t > exp + policy.leeway:
        raise Unauthenticated("token has expired")
    if isinstance(nbf, int | float) and t < nbf - policy.leeway:
        raise Unauthenticated("token is not valid yet")
    return principal_from(claims)


class Verifier:
    """``validate`` with a memory: a token already verified is not verified again
    until it expires (a client reuses one token for many requests, and an
    ES384/RS384 signature check costs more than the lookup it guards)."""

    def __init__(
        self, policy: TokenPolicy, maxsize: int = 10_000, now: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.maxsize = maxsize
        self.now = now
        self._seen: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()

    def __call__(self, token: str) -> Principal:
        """The caller for ``token``; Unauthenticated when it does not (or no longer) validate."""
        hit = self._seen.get(token)
        t = self.now()
        if hit is not None:
            principal, not_before, expires = hit
            if not_before <= t <= expires:
                return principal
            del self._seen[token]
        principal = validate(token, self.policy, self.now)
        claims = _claims_unverified(token)
        leeway = self.policy.leeway
        self._seen[token] = (
            principal,
            float(claims.get("nbf", 0)) - leeway,
            float(claims["exp"]) + leeway,
        )
        if len(self._seen) > self.maxsize:
            self._seen.popitem(last=False)
        return principal


def _claims_unverified(token: str) -> dict[str, Any]:
    """The payload of a token ``validate`` has just accepted."""
    body = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def principal_from(claims: dict[str, Any]) -> Principal:
    """Map the token's claims to the caller (role, ODS organisation, purpose, scopes)."""
    scope = claims.get("scope", "")
    return Principal(
        subject=str(claims.get("sub", "")),
        role=claims.get("role"),
        organisation=claims.get("organisation"),
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        purpose=claims.get("purpose_of_use"),
        patient=claims.get("patient"),
    )


def load_keys(path: str) -> KeySet:
    """The issuer's public keys from a JWKS file; a clear error names the file."""
    from pathlib import Path

    from carelink.errors import ConfigError

    try:
        data = orjson.loads(Path(path).read_bytes())
        return KeySet.import_key_set(data)
    except (OSError, orjson.JSONDecodeError, JoseError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a readable JWKS ({type(exc).__name__})") from exc


def bearer(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer …`` header."""
    if not authorization:
        raise Unauthenticated("a bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()
