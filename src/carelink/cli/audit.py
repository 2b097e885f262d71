"""``carelink audit``: verify the audit trail's hash chain against the latest signed
checkpoint, or sign a new checkpoint of its head."""

from __future__ import annotations

import argparse
import sys

import orjson

from carelink import errors
from carelink.cli.codes import EXIT_OK, EXIT_TAMPERED


def audit(args: argparse.Namespace) -> int:
    from carelink.audit import checkpoints
    from carelink.audit.trail import AuditTrail
    from carelink.audit.verify import verify, verify_index
    from carelink.settings import Settings
    from carelink.storage.audit_store import AuditStore

    settings = Settings.from_env()
    keys, folder = settings.audit_paths()
    keys = args.keys or keys
    if args.audit_command == "checkpoint":
        key = checkpoints.load_or_make_key(keys)
    else:
        key = checkpoints.load_key(keys)  # a verifier never makes itself a key to trust
    db = settings.database(batch=True)
    db.check()
    if db.version() == 0:  # never make a database (or its schema) just to look at it
        raise errors.ConfigError(f"database {db.shown} holds no audit trail (no schema)")
    store = AuditStore(db)
    if args.audit_command == "checkpoint":
        cp = AuditTrail(store).checkpoint(key)
        if args.out:
            args.out.write_bytes(orjson.dumps(cp, option=orjson.OPT_INDENT_2))
            out = args.out
        else:
            out = checkpoints.write(folder, cp)
        print(f"checkpoint at record {cp['seq']} written to {out}")
        return EXIT_OK
    path = args.checkpoint or checkpoints.latest(folder)
    checkpoint = checkpoints.read(path) if path else None
    if checkpoint is None:
        print(
            f"carelink: no checkpoint in {folder}: a cut-off tail cannot be detected",
            file=sys.stderr,
        )
    findings = verify(store.rows(), checkpoint, key.public_key()) + verify_index(store)
    for f in findings:
        print(f"record {f.seq}: {f.problem}")
    if findings:
        return EXIT_TAMPERED
    seq, _ = store.head()
    upto = f" and checkpoint {path} (record {checkpoint['seq']})" if checkpoint else ""
    print(f"audit trail intact: {seq} records{upto}")
    return EXIT_OK
