"""Outbound TLS for a source: the CA to trust and the client certificate to present.

GP Connect requires mutual TLS between consumer and the Spine Secure Proxy; any
source may be configured the same way (``Settings.source_tls``). The context is
made once per source when its session is opened.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from carelink.errors import ConfigError


@dataclass(frozen=True)
class SourceTLS:
    """PEM files for one source: the client certificate and key (both or neither) and
    the CA bundle that signs the source's server certificate (system CAs when unset)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None


def client_context(tls: SourceTLS, source: str) -> ssl.SSLContext:
    """A client ``SSLContext`` verifying the server (hostname too) and presenting the
    client certificate; ``ConfigError`` naming the source and file when one is unusable."""
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(f"source {source!r}: a TLS client certificate needs both cert and key")
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"source {source!r}: TLS files unusable: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
