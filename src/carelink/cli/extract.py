"""``carelink extract`` and ``carelink optout``: secondary use from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from carelink import errors
from carelink.cli.codes import EXIT_OK, UsageError


def extract(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from carelink.assembly import pcns_of
    from carelink.export.spec import Cohort, ExtractSpec, type_filters
    from carelink.offline import extract_with
    from carelink.settings import Settings

    settings = Settings.from_env()
    pcns = pcns_of(settings)
    types = _extract_types(args.type) if args.type else None
    cohort = _cohort(args.group, pcns, settings) if args.group else Cohort()

    spec = ExtractSpec(
        project=args.project,
        profile=args.profile,
        types=types,
        cohort=cohort,
        k=args.k,
        m=args.m,
        purpose=args.purpose,
        since=_instant(args.since) if args.since else None,
        type_filters=type_filters(args.type_filter or ()),
    )
    with Progress(transient=True) as bar:
        task = bar.add_task("extracting", total=None)

        async def progress(done: int, total: int) -> bool:
            bar.update(task, completed=done, total=total)
            return True

        done = asyncio.run(extract_with(settings, spec, args.out, progress))
    for name, count in sorted(done.counts.items()):
        print(f"{name}: {count} rows")
    for problem in done.manifest["errors"]:
        print(f"warning: {problem} (OperationOutcome.ndjson)", file=sys.stderr)
    print(f"written to {args.out} (Parquet tables, dictionary.json, manifest.json)")
    return EXIT_OK


def _extract_types(asked: Sequence[str]) -> frozenset[str]:
    """``--type`` values: each a FHIR R4 resource type the gateway can extract."""
    from carelink.anonymise.walk import types as r4_types
    from carelink.federation.query import SEARCH_TYPES

    extractable = {"Patient", *SEARCH_TYPES}
    wanted = {t.strip() for value in asked for t in value.split(",") if t.strip()}
    for name in sorted(wanted):
        if name in extractable:
            continue
        if name not in r4_types() or "_" in name:
            raise UsageError(f"--type {name}: not a FHIR R4 resource type")
        raise UsageError(
            f"--type {name}: not extracted by carelink (one of {', '.join(sorted(extractable))})"
        )
    return frozenset(wanted)


def _cohort(group: str, pcns: Any, settings: Any) -> Any:
    """``--group``: a group that exists. A malformed group or a practice nobody in the
    index is registered with is a usage error; a PCN not configured, a configuration
    error (CARELINK_PCNS)."""
    from carelink.export.reading import Member
    from carelink.export.spec import Cohort
    from carelink.storage import IndexStore

    try:
        cohort = Cohort.from_group(group, pcns)
    except errors.NotFound as exc:
        if group.startswith("pcn-"):
            raise errors.ConfigError(str(exc)) from None
        raise UsageError(f"--group {exc}") from None
    if cohort.kind != "practice":
        return cohort
    db = settings.database(batch=True)
    db.check()
    store = IndexStore(db)
    try:
        if not any(Member.of(row).practice == cohort.value for row in store.each_person()):
            raise UsageError(
                f"--group {group}: no one in the patient index is registered with practice "
                f"{cohort.value}"
            )
    finally:
        store.close()
        db.dispose()
    return cohort


def _instant(text: str) -> datetime:
    """``--since``, read as ``_since`` is on ``$export``: a FHIR date or dateTime (its start)."""
    from carelink.fhir.search import parse_date

    try:
        return parse_date(text, "--since").range.start
    except errors.CarelinkError:
        raise ValueError(f"--since {text!r} is not a FHIR date or dateTime") from None


def optout(args: argparse.Namespace) -> int:
    import csv

    from carelink.fhir.nhs import normalise, problem
    from carelink.settings import Settings
    from carelink.storage import OptOutStore

    rows = []
    with args.file.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().lower() in ("nhs_number", ""):
                continue
            if len(row) != 2 or row[1].strip() not in OptOutStore.KINDS:
                raise ValueError(f"{args.file}:{n}: expected nhs_number,kind (ndop or type1)")
            why = problem(row[0].strip())
            if why is not None:
                raise ValueError(f"{args.file}:{n}: not an NHS number: {why}")
            rows.append((normalise(row[0].strip()), row[1].strip()))
    db = Settings.from_env().database(batch=True)
    db.migrate()
    added = OptOutStore(db).load(rows, datetime.now(UTC).isoformat())
    db.dispose()
    print(f"{added} opt-outs added ({len(rows) - added} already known)")
    return EXIT_OK
