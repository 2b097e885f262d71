"""``carelink token mint``: a development token signed by the gateway's own issuer key
(refused in production mode)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from carelink import errors
from carelink.cli.codes import EXIT_OK


def mint(args: argparse.Namespace) -> int:
    from carelink.auth.local_issuer import LocalIssuer
    from carelink.settings import Settings

    if os.environ.get("CARELINK_MODE") == "production":
        raise errors.ConfigError("development tokens are refused in production mode")
    settings = Settings.from_env()  # the same issuer key and audience as the gateway's
    keys = args.keys or Path(settings.issuer_keys)
    audience = args.audience or settings.audience or "http://127.0.0.1:8080/fhir"
    claims = {
        "sub": args.subject,
        "role": args.role,
        "organisation": args.organisation,
        "purpose_of_use": args.purpose,
        "scope": args.scope,
    }
    if args.patient:
        # a citizen (or someone acting for them): no clinical role, no organisation
        claims = {
            "sub": args.subject,
            "purpose_of_use": args.purpose,
            "scope": args.scope,
            "patient": args.patient,
        }
    issuer = LocalIssuer(keys, create=False)
    print(issuer.mint(audience, claims, lifetime=args.minutes * 60))
    return EXIT_OK
