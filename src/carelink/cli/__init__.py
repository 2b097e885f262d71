"""The ``carelink`` command.

Exit codes (each means one thing, never reused):

- 0 success
- 1 an error carelink anticipated (message on stderr, one line)
- 2 usage error (bad arguments, e.g. an unknown resource type or group)
- 3 configuration error (settings, policy, profile or key files, a missing data folder,
  a database URL that is malformed, of an unsupported kind, or cannot be reached)
- 4 a source system could not be read (index build / update), or a source URL answers as
  another kind of system (index build / update, and ``serve`` before it starts)
- 5 the audit trail failed verification (``carelink audit verify``)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from carelink import __version__, errors
from carelink.cli.codes import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOURCE,
    EXIT_TAMPERED,
    EXIT_USAGE,
    UsageError,
)
from carelink.cli.extract import extract, optout
from carelink.cli.index import index

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess folder

if TYPE_CHECKING:
    from carelink.simulators.fhir_load import LoadReport


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carelink", description="Shared care record gateway.")
    p.add_argument("--version", action="version", version=f"carelink {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "init",
        help="make the data folder, the keys and the database schema (CARELINK_* settings)",
    )
    db = sub.add_parser("db", help="the database")
    dsub = db.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="apply the schema migrations not yet applied")
    dsub.add_parser("status", help="print the schema version applied and the latest known")

    demo = sub.add_parser("demo", help="run gateway + four simulators + embedded database")
    demo.add_argument("--size", type=int, default=2000, help="people in the population")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--port", type=int, default=8080, help="gateway port")
    demo.add_argument("--source-port", type=int, default=8101, help="first simulator port")
    demo.add_argument("--latency-ms", type=float, default=20.0)
    demo.add_argument("--database", default="var/demo.db")

    sim = sub.add_parser("simulate", help="run one simulated source system")
    sim.add_argument("name", choices=["acute", "gp", "community", "social-care"])
    sim.add_argument("--port", type=int, help="serve the HTTP interface on this port")
    sim.add_argument(
        "--feed-to", metavar="HOST:PORT", help="community: push the population over MLLP, then exit"
    )
    sim.add_argument("--replay", type=Path, help="with --feed-to: push this file's messages")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--size", type=int, default=2000)
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--data", type=Path, help="serve FHIR NDJSON/Bundles (acute, gp)")
    sim.add_argument("--latency-ms", type=float, default=0.0, help="median latency")
    sim.add_argument("--latency-sigma", type=float, default=0.25, help="log-normal shape")
    sim.add_argument("--error-rate", type=float, default=0.0)
    sim.add_argument("--hang-rate", type=float, default=0.0)
    sim.add_argument("--malformed-rate", type=float, default=0.0)
    sim.add_argument("--down", action="store_true")

    feed = sub.add_parser("feed", help="HL7 v2 feeds pushed over MLLP")
    fsub = feed.add_subparsers(dest="feed_command", required=True)
    fsub.add_parser("listen", help="take the feeds of CARELINK_SOURCES' mllp:// sources")

    serve = sub.add_parser("serve", help="run the gateway (settings from CARELINK_* env)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="JSON log lines on stderr from this level (default: CARELINK_LOG_LEVEL or info)",
    )

    index = sub.add_parser("index", help="the patient index")
    isub = index.add_subparsers(dest="index_command", required=True)
    isub.add_parser("build", help="read every source and (re)build the index")
    isub.add_parser("review", help="list near-miss demographic matches")
    upd = isub.add_parser(
        "update", help="apply the changes each source lists since the last build or update"
    )
    upd.add_argument(
        "--every", type=float, metavar="SECONDS", help="keep running, updating this often"
    )
    upd.add_argument(
        "--reconcile", action="store_true", help="also compare every source's whole listing"
    )
    upd.add_argument("--fix", action="store_true", help="with --reconcile: apply what differs")

    token = sub.add_parser("token", help="development tokens (refused in production mode)")
    tsub = token.add_subparsers(dest="token_command", required=True)
    mint = tsub.add_parser("mint", help="print a signed development token")
    mint.add_argument(
        "--audience",
        help="the gateway's FHIR base URL (default: CARELINK_AUDIENCE, as the gateway reads "
        "it, else http://127.0.0.1:8080/fhir as `carelink serve` serves it)",
    )
    mint.add_argument("--subject", default="dev-clinician")
    mint.add_argument("--role", default="R8000", help="NHS national RBAC role code")
    mint.add_argument("--organisation", default="RXX01", help="ODS code")
    mint.add_argument("--purpose", default="TREAT", help="v3 ActReason purpose of use")
    mint.add_argument("--scope", default="user/*.rs")
    mint.add_argument("--patient", help="for a citizen's token: their patient id")
    mint.add_argument("--minutes", type=int, default=60)
    mint.add_argument(
        "--keys",
        type=Path,
        help="the gateway's issuer key directory (default: CARELINK_ISSUER_KEYS); never made here",
    )

    aud = sub.add_parser("audit", help="the tamper-evident audit trail")
    asub = aud.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser(
        "verify", help="check the hash chain and the latest signed checkpoint (never makes keys)"
    )
    ver.add_argument(
        "--checkpoint",
        type=Path,
        help="a checkpoint file (default: the latest in CARELINK_AUDIT_CHECKPOINTS)",
    )
    cp = asub.add_parser("checkpoint", help="sign the current head and write it out")
    cp.add_argument(
        "--out", type=Path, help="the file (default: a new one in CARELINK_AUDIT_CHECKPOINTS)"
    )
    for p_ in (ver, cp):
        p_.add_argument(
            "--keys",
            type=Path,
            help="where the Ed25519 checkpoint key lives (default: CARELINK_AUDIT_KEYS)",
        )

    ext = sub.add_parser("extract", help="a de-identified extract as Parquet tables")
    ext.add_argument("--project", required=True, help="the project (its keys derive from it)")
    ext.add_argument(
        "--profile",
        default="anonymised",
        choices=["anonymised", "pseudonymised", "aggregate"],
        help="de-identification profile (default anonymised)",
    )
    ext.add_argument("--out", type=Path, required=True)
    ext.add_argument(
        "--group", help="practice-<ODS>, pcn-<ODS> (CARELINK_PCNS) or condition-<SNOMED CT code>"
    )
    ext.add_argument("--type", action="append", help="resource types (repeatable)")
    ext.add_argument("--k", type=int, default=5, help="k-anonymity threshold (anonymised)")
    ext.add_argument(
        "--m",
        type=int,
        default=2,
        help="facts about a person's care the intruder knows (anonymised; default 2)",
    )
    ext.add_argument(
        "--since", help="only resources updated at or after this instant (FHIR dateTime)"
    )
    ext.add_argument(
        "--type-filter",
        action="append",
        help="Bulk Data _typeFilter, e.g. Observation?category=laboratory (repeatable)",
    )
    ext.add_argument(
        "--purpose",
        default="HOPERAT",
        help="v3 ActReason the extract serves; one of the policy's secondaryUsePurposes",
    )

    opt = sub.add_parser("optout", help="secondary-use opt-outs")
    osub = opt.add_subparsers(dest="optout_command", required=True)
    load = osub.add_parser("load", help="load a CSV of nhs_number,kind (ndop | type1)")
    load.add_argument("file", type=Path)

    pop = sub.add_parser("population", help="the synthetic population")
    psub = pop.add_subparsers(dest="population_command", required=True)
    gen = psub.add_parser("generate", help="stream a population to NDJSON files")
    gen.add_argument("--size", type=int, required=True)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--out", type=Path, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carelink`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UsageError as exc:
        _fail(f"usage error: {exc}")
        return EXIT_USAGE
    except errors.ConfigError as exc:
        _fail(f"configuration error: {exc}")
        return EXIT_CONFIG
    except errors.StorageUnavailable as exc:
        _fail(f"configuration error: {exc}")
        return EXIT_CONFIG
    except errors.SourceError as exc:
        _fail(f"source error: {exc}")
        return EXIT_SOURCE
    except (errors.CarelinkError, ValueError, OSError) as exc:
        _fail(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _fail(text: str) -> None:
    """The one line a failed command ends with, after every log line before it (the
    gateway writes its log lines in batches: ``observability.logs.BufferedLines``)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(f"carelink: {text}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _init()
    if args.command == "db":
        return _db(args)
    if args.command == "simulate" and args.feed_to:
        return _push_feed(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "feed":
        from carelink.app import feed_keeper
        from carelink.feeds.run import listen_until_stopped
        from carelink.settings import Settings

        settings = Settings.from_env()
        return listen_until_stopped(settings, feed_keeper(settings))
    if args.command == "serve":
        return _serve(args)
    if args.command == "index":
        return index(args)
    if args.command == "token":
        return _mint(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "extract":
        return extract(args)
    if args.command == "optout":
        return optout(args)
    if args.command == "population":
        from carelink.simulators.export import generate

        report = generate(args.size, args.seed, args.out)
        print(f"wrote {report} to {args.out}")
        return EXIT_OK
    from carelink.demo import run_demo

    return run_demo(
        size=args.size,
        seed=args.seed,
        port=args.port,
        source_port=args.source_port,
        latency_ms=args.latency_ms,
        database=args.database,
    )


def _push_feed(args: argparse.Namespace) -> int:
    """``simulate community --feed-to HOST:PORT [--replay FILE]``: send, report, exit."""
    from carelink.simulators.community import feed
    from carelink.simulators.feed import send_feed, split_file

    host, _, port = args.feed_to.rpartition(":")
    if args.name != "community" or not host or not port.isdigit():
        print("carelink: --feed-to HOST:PORT is for the community simulator", file=sys.stderr)
        return EXIT_USAGE
    if args.replay is not None:
        messages = split_file(args.replay.read_text(encoding="utf-8"))
    else:
        messages = list(feed(args.seed, args.size))
    report = asyncio.run(send_feed(messages, host, int(port)))
    print(f"carelink simulate: feed to {args.feed_to}: {report.summary()}")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    import uvicorn

    if args.port is None:
        print("carelink: simulate needs --port (or --feed-to)", file=sys.stderr)
        return EXIT_USAGE
    from carelink.serving import PROTOCOL
    from carelink.simulators.base import Behaviour
    from carelink.simulators.registry import create_simulator

    behaviour = Behaviour(
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        malformed_rate=args.malformed_rate,
        down=args.down,
    )
    app = create_simulator(
        args.name, seed=args.seed, size=args.size, behaviour=behaviour, data=args.data
    )
    report = getattr(app.state, "load_report", None) if args.data is not None else None
    if report is not None:
        _print_load_report(args.data, report)
    # The population is loaded: keep the collector off it (see carelink.app.GC_THRESHOLDS).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # httptools with each answer's head and body in one write, as the gateway serves: a
    # second write per answer costs the machine a loopback packet on either side
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=PROTOCOL,
    )
    return EXIT_OK


def _print_load_report(path: Path, report: LoadReport, shown: int = 100) -> None:
    """What ``--data`` loaded, then each resource served without an id or skipped, by
    file and line (counts and places only, never the data)."""
    print(f"carelink simulate: {path}: {report.summary()}", file=sys.stderr)
    problems = [*report.without_id, *report.skipped]
    for problem in problems[:shown]:
        print(f"  {problem}", file=sys.stderr)
    if len(problems) > shown:
        print(f"  ... and {len(problems) - shown} more", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1:  # before the app's imports: a usage error is answered at once
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    # The checks below build an app in this (the supervising) process: its metrics must
    # stay in memory, not become a third writer beside the workers in the shared folder.
    # prometheus_client reads the variable when it is first imported, just below.
    shared = os.environ.pop(MULTIPROC_DIR, None)
    from carelink.observability import prepare_multiprocess
    from carelink.settings import Settings
    from carelink.start import WorkerFailed, preflight, serve, source_warnings

    if "CARELINK_AUDIENCE" not in os.environ:
        # tokens are for this gateway: its FHIR base as served here
        os.environ["CARELINK_AUDIENCE"] = f"http://{args.host}:{args.port}/fhir"
    settings = Settings.from_env()
    preflight(settings)  # everything a worker needs, checked once before any starts
    for warning in source_warnings(settings):  # a wrong kind of source: exit 4 here
        print(f"carelink: warning: {warning}", file=sys.stderr)
    if shared is not None:
        os.environ[MULTIPROC_DIR] = shared
    prepare_multiprocess(args.workers)  # each worker's metrics in files a scrape sums
    try:
        serve(settings, args.host, args.port, args.workers, args.log_level or settings.log_level)
    except WorkerFailed as exc:
        _fail(str(exc))
        return EXIT_ERROR
    return EXIT_OK


def _init() -> int:
    """Make what the gateway needs and never makes on its own in production."""
    from carelink.anonymise.keys import load_master_key
    from carelink.app import _export_paths
    from carelink.audit.checkpoints import load_or_make_key
    from carelink.auth.local_issuer import LocalIssuer
    from carelink.settings import Settings

    settings = Settings.from_env()
    if "://" not in settings.database_url:
        Path(settings.database_url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    LocalIssuer(Path(settings.issuer_keys))
    audit_keys, _ = settings.audit_paths()
    load_or_make_key(audit_keys)
    _, master = _export_paths(settings)
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


def _db(args: argparse.Namespace) -> int:
    from carelink.settings import Settings
    from carelink.storage.database import MIGRATIONS

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


def _mint(args: argparse.Namespace) -> int:
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


def _audit(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
