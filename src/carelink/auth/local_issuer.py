"""The gateway's own token issuer: one local ES384 key, tokens minted on request.

It signs the access tokens of the backend-services token endpoint, and the
development tokens of ``carelink demo`` and ``carelink token mint`` (the CLI
refuses those in production mode). The private key lives in
``<dir>/private.jwk.json`` (file mode 0600); its public half in ``<dir>/jwks.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from carelink.errors import ConfigError
from carelink.secret_files import create_secret

LOCAL_ISSUER = "urn:carelink:local-issuer"


class LocalIssuer:
    """Loads the signing key under ``directory``; makes it there first when ``create``
    (the gateway on its first start, ``carelink init``, the demo). A command that only
    mints (``carelink token mint``, the load tests) never makes one: a token signed
    with a key the gateway does not have would only be refused."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self.directory = directory
        private = directory / "private.jwk.json"
        if private.exists():
            self.key = ECKey.import_key(orjson.loads(private.read_bytes()))
        elif not create:
            raise ConfigError(
                f"no issuer key in {directory} (CARELINK_ISSUER_KEYS): the gateway makes it "
                "on its first start, or `carelink init`"
            )
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.key = ECKey.generate_key("P-384", parameters={"use": "sig"})
            self.key.ensure_kid()
            create_secret(private, orjson.dumps(self.key.as_dict(private=True)))
        self.key.ensure_kid()
        self.jwks_path = directory / "jwks.json"
        self.jwks_path.write_bytes(orjson.dumps(KeySet([self.key]).as_dict(private=False)))

    def mint(
        self,
        audience: str,
        claims: dict[str, Any],
        lifetime: int = 3600,
        now: Callable[[], float] = time.time,
    ) -> str:
        """A signed token for ``audience`` carrying ``claims`` (role, organisation, ...)."""
        t = int(now())
        body = {
            "iss": LOCAL_ISSUER,
            "aud": audience,
            "iat": t,
            "nbf": t,
            "exp": t + lifetime,
            **claims,
        }
        return jwt.encode(
            {"alg": "ES384", "kid": self.key.kid}, body, self.key, algorithms=["ES384"]
        )
