"""SMART Backend Services: ``client_credentials`` with a ``private_key_jwt`` assertion.

A registered client proves itself with a JWT it signs (RS384 or ES384) with
a key from its registered JWKS; the gateway answers with a short-lived access
token from its own issuer. The assertion must have ``iss`` = ``sub`` = the
client id, ``aud`` = the token endpoint's URL, an ``exp`` no more than five
minutes ahead, and a ``jti`` never used before by that client (checked in the
database, so every gateway process agrees). Clocks differ: ``exp``, ``nbf``
and ``iat`` are judged with ``CLOCK_SKEW`` (60 s) of tolerance, so a client
that rounds its clock and adds exactly five minutes (the SMART
``bulk-data-client`` does) is not refused for a fraction of a second, while
an ``exp`` more than five minutes and the tolerance ahead still is.

Keys come only from the registration, either the JWKS itself or a JWKS URL
given at registration; a ``jku`` in the assertion is never fetched. A
registered URL is fetched with a short timeout, cached, and fetched again at
most once a minute when an assertion names a ``kid`` the cached set lacks (key
rotation). A registration also names the client's data-sharing agreement, the
de-identification profile its extracts get (``deid_profile_for``).

Errors follow RFC 6749 section 5.2 (``invalid_client``, ``invalid_request``,
``unsupported_grant_type``, ``invalid_scope``).
"""

from __future__ import annotations

import base64
import ipaddress
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from carelink.auth.local_issuer import LocalIssuer
from carelink.auth.scopes import ScopeError, parse, within
from carelink.errors import AccessDenied, ConfigError
from carelink.storage import ReplayStore
from carelink.storage.tables import CLAIM_LENGTH

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300
#: seconds by which a client's clock may differ from the gateway's (exp, nbf, iat)
CLOCK_SKEW = 60
ACCESS_TOKEN_LIFETIME = 300

#: de-identification profiles a data-sharing agreement can name, most identifying first
DEID_PROFILES = ("pseudonymised", "anonymised", "aggregate")  # most to least identifying
#: what a registration that names none agrees to (and all a caller without one gets)
DEFAULT_DEID_PROFILE = "anonymised"
REGISTRATION_FIELDS = frozenset(
    {"client_id", "client_name", "jwks", "jwks_uri", "scope", "purpose", "deid_profile"}
)


class OAuthError(Exception):
    """An RFC 6749 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.error, "error_description": self.description}


JWKS_FETCH_TIMEOUT = 3.0
JWKS_CACHE_SECONDS = 3600.0
JWKS_REFETCH_SECONDS = 60.0
JWKS_MAX_BYTES = 256 * 1024


class RegisteredJwks:
    """A client's keys behind the JWKS URL given at registration, cached.

    Only this URL is ever fetched; it must be https, except on a loopback host
    (development and tests).
    """

    def __init__(self, url: str, now: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(url)
        loopback = parts.hostname in {"localhost"} or _is_loopback(parts.hostname)
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ConfigError(f"jwks_uri {url!r} must be https (http only on a loopback host)")
        self.url = url
        self.now = now
        self._keys: KeySet | None = None
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def keys_for(self, kid: object) -> KeySet:
        """The key set, fetched again if stale or if it lacks ``kid`` (at most once a minute)."""
        with self._lock:
            age = self.now() - self._fetched
            known = self._keys is not None and any(k.kid == kid for k in self._keys.keys)
            if (
                self._keys is None
                or age > JWKS_CACHE_SECONDS
                or (not known and age > JWKS_REFETCH_SECONDS)
            ):
                self._keys = self._fetch()
                self._fetched = self.now()
            return self._keys

    def _fetch(self) -> KeySet:
        try:
            with urllib.request.urlopen(self.url, timeout=JWKS_FETCH_TIMEOUT) as answer:  # noqa: S310 - scheme checked above
                body = answer.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError("JWKS too large")
            return KeySet.import_key_set(orjson.loads(body))
        except (OSError, ValueError, KeyError, TypeError, JoseError) as exc:
            raise OAuthError(
                "invalid_client", "the client's registered JWKS URL could not be read", 401
            ) from exc


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def deid_profiles_within(agreed: str) -> tuple[str, ...]:
    """The profiles an agreement for ``agreed`` covers: that one and any less identifying.

    >>> deid_profiles_within("pseudonymised")
    ('pseudonymised', 'anonymised', 'aggregate')
    >>> deid_profiles_within("anonymised")
    ('anonymised', 'aggregate')
    """
    return DEID_PROFILES[DEID_PROFILES.index(agreed) :]


def deid_profile_for(agreed: str | None, asked: str | None) -> str:
    """The profile an extract gets under the agreement ``agreed`` (``None``: the caller
    has no registration here, so ``DEFAULT_DEID_PROFILE``) when ``asked`` names one (or
    ``None``): the agreed one by default, or a less identifying one asked for.

    A more identifying one is ``AccessDenied``; a name that is no profile is passed on
    for the extract's own check to refuse.

    >>> deid_profile_for("pseudonymised", None), deid_profile_for("pseudonymised", "anonymised")
    ('pseudonymised', 'anonymised')
    """
    agreed = agreed or DEFAULT_DEID_PROFILE
    if asked is None:
        return agreed
    if asked in DEID_PROFILES and asked not in deid_profiles_within(agreed):
        raise AccessDenied(
            f"profile {asked} is more identifying than this client's data-sharing agreement "
            f"({agreed}) allows"
        )
    return asked


@dataclass(frozen=True)
class Client:
    """A registered backend client: its keys (a JWKS or a JWKS URL), the most it may ask
    for, and the de-identification profile its data-sharing agreement allows."""

    client_id: str
    keys: KeySet | RegisteredJwks
    scopes: frozenset[str]
    purpose: str = "HOPERAT"
    deid_profile: str = DEFAULT_DEID_PROFILE

    def keys_for(self, kid: object) -> KeySet:
        """The registered keys to verify an assertion naming ``kid``."""
        if isinstance(self.keys, KeySet):
            return self.keys
        return self.keys.keys_for(kid)


def load_clients(path: Path) -> dict[str, Client]:
    """Registrations from a JSON file, each checked; a bad one is a one-line ``ConfigError``
    naming the file and the client.

    ``[{"client_id", "jwks" | "jwks_uri", "scope", "purpose"?, "deid_profile"?,
    "client_name"?}]``: exactly one of ``jwks`` and ``jwks_uri``; ``deid_profile`` is
    ``anonymised`` (the default) or ``pseudonymised``; no other fields (a misspelt
    one would otherwise be silently ignored).
    """
    try:
        entries = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid client registry ({type(exc).__name__})") from exc
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: a client registry is a JSON list of registrations")
    clients = {}
    for e in entries:
        client = _registration(path, e)
        if client.client_id in clients:
            raise ConfigError(f"{path}: client {client.client_id!r} is registered twice")
        clients[client.client_id] = client
    return clients


def _registration(path: Path, e: object) -> Client:
    if not isinstance(e, dict) or not isinstance(e.get("client_id"), str) or not e["client_id"]:
        raise ConfigError(f"{path}: every registration needs a client_id")
    if len(e["client_id"]) > CLAIM_LENGTH or not e["client_id"].isprintable():
        raise ConfigError(f"{path}: a client_id is text of at most {CLAIM_LENGTH} characters")
    where = f"{path}: client {e['client_id']!r}"
    unknown = sorted(set(e) - REGISTRATION_FIELDS)
    if unknown:
        raise ConfigError(f"{where} has an unknown field {unknown[0]!r}")
    if ("jwks" in e) == ("jwks_uri" in e):
        raise ConfigError(f"{where} needs exactly one of jwks and jwks_uri")
    if not isinstance(e.get("scope"), str):
        raise ConfigError(f"{where} needs a scope (space-separated system/ scopes)")
    profile = e.get("deid_profile", DEFAULT_DEID_PROFILE)
    if profile not in DEID_PROFILES:
        raise ConfigError(
            f"{where} has deid_profile {profile!r}; expected one of {', '.join(DEID_PROFILES)}"
        )
    try:
        keys: KeySet | RegisteredJwks = (
            KeySet.import_key_set(e["jwks"]) if "jwks" in e else RegisteredJwks(e["jwks_uri"])
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, JoseError) as exc:
        raise ConfigError(f"{where} has unusable keys ({type(exc).__name__})") from exc
    return Client(
        e["client_id"],
        keys,
        frozenset(e["scope"].split()),
        str(e.get("purpose", "HOPERAT")),
        profile,
    )


class TokenService:
    """The token endpoint's logic, without HTTP."""

    def __init__(
        self,
        clients: Mapping[str, Client],
        token_url: str,
        audience: str,
        issuer: LocalIssuer,
        replay: ReplayStore,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.clients = clients
        self.token_url = token_url
        self.audience = audience
        self.issuer = issuer
        self.replay = replay
        self.now = now

    def exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        """Answer a token request, or raise ``OAuthError``.

        The assertion's times are judged against this service's clock with
        ``CLOCK_SKEW`` (60 s) of tolerance either way: ``exp`` may lie up to five
        minutes plus the tolerance ahead and up to the tolerance behind; ``nbf`` and
        ``iat``, when present, no more than the tolerance ahead.
        """
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion is required")
        client = self._authenticate(assertion)
        granted = self._scopes(client, form.get("scope", ""))
        token = self.issuer.mint(
            self.audience,
            {
                "sub": client.client_id,
                "client_id": client.client_id,
                "scope": " ".join(sorted(granted)),
                "purpose_of_use": client.purpose,
            },
            lifetime=ACCESS_TOKEN_LIFETIME,
            now=self.now,
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "scope": " ".join(sorted(granted)),
        }

    def _authenticate(self, assertion: str) -> Client:
        header = _part(assertion, 0)
        if header.get("alg") not in CLIENT_ALGORITHMS:
            raise OAuthError("invalid_client", "assertion algorithm must be RS384 or ES384", 401)
        # Unverified only to find whose keys to verify with; nothing else is trusted yet.
        client = self.clients.get(str(_part(assertion, 1).get("iss")))
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        try:
            keys = client.keys_for(header.get("kid"))
            verified = jwt.decode(assertion, keys, algorithms=list(CLIENT_ALGORITHMS))
        except JoseError as exc:
            raise OAuthError(
                "invalid_client",
                "assertion signature does not verify with the client's registered keys",
                401,
            ) from exc
        c = verified.claims
        if c.get("sub") != client.client_id:
            raise OAuthError(
                "invalid_client", "assertion iss and sub must both be the client id", 401
            )
        aud = c.get("aud")
        if self.token_url not in (aud if isinstance(aud, list) else [aud]):
            raise OAuthError("invalid_client", "assertion aud must be the token endpoint URL", 401)
        now = self.now()
        exp = c.get("exp")
        if not _numeric_date(exp) or exp + CLOCK_SKEW < now:
            raise OAuthError("invalid_client", "assertion has expired or has no exp", 401)
        if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise OAuthError("invalid_client", "assertion exp is more than 5 minutes ahead", 401)
        for claim in ("nbf", "iat"):
            value = c.get(claim)
            if value is not None and (not _numeric_date(value) or value > now + CLOCK_SKEW):
                raise OAuthError("invalid_client", f"assertion {claim} is in the future", 401)
        jti = c.get("jti")
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "assertion needs a jti", 401)
        if len(jti) > CLAIM_LENGTH or not jti.isprintable():  # it is stored to refuse replays
            raise OAuthError(
                "invalid_client", f"assertion jti must be text of at most {CLAIM_LENGTH}", 401
            )
        # Remembered for as long as the assertion could still be accepted.
        remember_until = math.ceil(exp) + CLOCK_SKEW
        if not self.replay.first_use(client.client_id, jti, remember_until, int(now)):
            raise OAuthError("invalid_client", "assertion jti has been used before", 401)
        return client

    def _scopes(self, client: Client, requested: str) -> frozenset[str]:
        """What is asked for and lies within the registration; nothing is ever widened."""
        if not requested.split():
            return client.scopes
        registered = [r for r in (parse(x) for x in client.scopes) if r is not None]
        granted = set()
        for s in requested.split():
            try:
                scope = parse(s)
            except ScopeError as exc:
                raise OAuthError("invalid_scope", str(exc)) from exc
            if scope is None:
                continue
            if scope.context != "system":
                raise OAuthError("invalid_scope", f"backend services get system/ scopes, not {s}")
            if any(within(scope, r) for r in registered):
                granted.add(s)
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is registered")
        return frozenset(granted)


def _numeric_date(value: object) -> TypeGuard[int | float]:
    """A JWT NumericDate: seconds since the epoch, an integer or not (never a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _part(token: str, index: int) -> dict[str, Any]:
    try:
        raw = token.split(".")[index]
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError) as exc:
        raise OAuthError("invalid_client", "client_assertion is not a JWT", 401) from exc
    if not isinstance(value, dict):
        raise OAuthError("invalid_client", "client_assertion is not a JWT", 401)
    return value
