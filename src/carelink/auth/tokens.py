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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from carelink.auth.principal import Principal
from carelink.errors import Unauthenticated
from carelink.recent import Recent
from carelink.storage.tables import CLAIM_LENGTH

ALLOWED_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256", "PS384")
#: a bearer token longer than this is refused unread (the header limit bounds it too)
MAX_TOKEN_LENGTH = 16 * 1024


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


def _segment(token: str, index: int) -> dict[str, Any]:
    """One base64url JSON object of a compact JWS; anything else (a list, null, a
    number, garbage, a token of the wrong shape) is not a JWT: 401, never 500."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("the bearer token is not a JWT")
    try:
        part = parts[index]
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise Unauthenticated("the bearer token is not a JWT") from None
    if not isinstance(value, dict):
        raise Unauthenticated("the bearer token is not a JWT")
    return value


def _header(token: str) -> dict[str, Any]:
    return _segment(token, 0)


def validate(token: str, policy: TokenPolicy, now: Callable[[], float] = time.time) -> Principal:
    """The caller a token speaks for, or ``Unauthenticated`` saying why not."""
    header = _header(token)
    _segment(token, 1)  # the claims must be a JSON object too
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        shown = repr(alg) if isinstance(alg, str) and len(alg) <= 16 else "(malformed)"
        raise Unauthenticated(f"token algorithm {shown} is not accepted")
    kid = header.get("kid")
    issuer = policy.issuer_of(kid) if isinstance(kid, str) else None
    if issuer is None:
        raise Unauthenticated("token key id is not one of the issuer's keys")
    try:
        decoded = jwt.decode(token, policy.issuers[issuer], algorithms=list(policy.algorithms))
    except (JoseError, ValueError, TypeError) as exc:
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
    if nbf is not None and not isinstance(nbf, int | float):
        raise Unauthenticated("token nbf is not a time")
    if isinstance(nbf, int | float) and t < nbf - policy.leeway:
        raise Unauthenticated("token is not valid yet")
    return principal_from(claims, issuer)


class Verifier:
    """``validate`` with a memory: a token already verified is not verified again
    until it expires (a client reuses one token for many requests, and an
    ES384/RS384 signature check costs more than the lookup it guards)."""

    def __init__(
        self, policy: TokenPolicy, maxsize: int = 10_000, now: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.now = now
        self._seen: Recent[str, tuple[Principal, float, float]] = Recent(maxsize)

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
        claims = _segment(token, 1)
        leeway = self.policy.leeway
        nbf = claims.get("nbf")
        self._seen.put(
            token,
            (
                principal,
                (float(nbf) if isinstance(nbf, int | float) else 0.0) - leeway,
                float(claims["exp"]) + leeway,
            ),
        )
        return principal


def _text(claims: dict[str, Any], name: str) -> str | None:
    """A string claim: non-empty, at most ``CLAIM_LENGTH`` characters, and no control
    characters (none belongs in a name, a role or an id, and PostgreSQL refuses a NUL in
    any text it stores: the subject goes into every AuditEvent's row, so one such token
    would fail the group commit its requests shared with others)."""
    value = claims.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > CLAIM_LENGTH
        or not value.isprintable()
    ):
        raise Unauthenticated(f"token claim {name} must be a non-empty string of text")
    return value


def principal_from(claims: dict[str, Any], issuer: str = "") -> Principal:
    """Map the token's claims to the caller (role, ODS organisation, purpose, scopes).

    The scopes must fit the token's context, or the token is refused:
    ``patient/`` scopes need a ``patient`` claim (else they would reach every
    patient); ``system/`` scopes come only in a backend-services token
    (``client_id`` = ``sub``, no role, organisation or patient). A patient's
    token (a citizen, or someone acting for them) carries no clinical role or
    organisation, whatever else it says.
    """
    subject = _text(claims, "sub")
    if subject is None:
        raise Unauthenticated("token has no subject")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise Unauthenticated("token scope must be a space-separated string")
    patient = _text(claims, "patient")
    principal = Principal(
        subject=subject,
        role=None if patient else _text(claims, "role"),
        organisation=None if patient else _text(claims, "organisation"),
        scopes=frozenset(scope.split()),
        purpose=_text(claims, "purpose_of_use"),
        patient=patient,
        issuer=issuer,
        client_id=_text(claims, "client_id"),
    )
    contexts = {s.split("/", 1)[0] for s in principal.scopes if "/" in s}
    if "patient" in contexts and patient is None:
        raise Unauthenticated("patient/ scopes need the patient context (a patient claim)")
    if "system" in contexts and not principal.backend:
        raise Unauthenticated("system/ scopes are only for backend-services tokens")
    return principal


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
