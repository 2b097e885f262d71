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

from carelink.secret_files import create_secret

LOCAL_ISSUER = "urn:carelink:local-issuer"


class LocalIssuer:
    """Loads (or makes, on first use) the development signing key under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        private = directory / "private.jwk.json"
        if private.exists():
            self.key = ECKey.import_key(orjson.loads(private.read_bytes()))
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
