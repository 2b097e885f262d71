"""The ``carelink`` command's arguments: one subcommand per task, each with its options
and their defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from carelink import __version__


def parser() -> argparse.ArgumentParser:
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
