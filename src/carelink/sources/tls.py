"""Outbound TLS for a source: the CA to trust and the client certificate to present.

GP Connect requires mutual TLS between consumer and the Spine Secure Proxy; any
source may be configured the same way (``Settings.source_tls``: client certificate
and key, both or neither, and the CA bundle signing the server's certificate, system
CAs when unset). The context is made once per source when its session is opened.
"""

from __future__ import annotations

import ssl

from carelink.errors import ConfigError


def client_context(
    source: str, cert: str | None, key: str | None, ca: str | None
) -> ssl.SSLContext:
    """A client ``SSLContext`` verifying the server (hostname too) and presenting the
    client certificate; ``ConfigError`` naming the source and file when one is unusable."""
    if (cert is None) != (key is None):
        raise ConfigError(f"source {source!r}: a TLS client certificate needs both cert and key")
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"source {source!r}: TLS files unusable: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
