"""``carelink init`` and ``carelink db``: what a gateway needs before it serves (its
data folder, keys and schema), and the schema's version."""

from __future__ import annotations

import argparse
from pathlib import Path

from carelink.cli.codes import EXIT_OK


def init() -> int:
    """Make what the gateway needs and never makes on its own in production."""
    from carelink.anonymise.keys import load_master_key
    from carelink.assembly import export_paths
    from carelink.audit.checkpoints import load_or_make_key
    from carelink.auth.local_issuer import LocalIssuer
    from carelink.settings import Settings

    settings = Settings.from_env()
    if "://" not in settings.database_url:
        Path(settings.database_url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    LocalIssuer(Path(settings.issuer_keys))
    audit_keys, _ = settings.audit_paths()
    load_or_make_key(audit_keys)
    _, master = export_paths(settings)
    master.parent.mkdir(parents=True, exist_ok=True)
    load_master_key(master, create=True)
    db = settings.database(batch=True)
    version = db.migrate()
    db.dispose()
    print(
        f"issuer key in {settings.issuer_keys}, audit checkpoint key in {audit_keys}, "
        f"extract master key {master}; database {db.shown} at schema version {version}"
    )
    return EXIT_OK


def db(args: argparse.Namespace) -> int:
    from carelink.settings import Settings
    from carelink.storage.migrations import MIGRATIONS

    db = Settings.from_env().database(batch=True)
    try:
        latest = max(n for n, _, _ in MIGRATIONS)
        if args.db_command == "upgrade":
            after = db.migrate()
            print(f"database {db.shown}: schema version {after} ({db.applied} applied)")
            return EXIT_OK
        db.check()
        now = db.version()
        print(f"database {db.shown}: schema version {now} of {latest}")
        return EXIT_OK
    finally:
        db.dispose()
