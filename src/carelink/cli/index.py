"""``carelink index``: build the patient index, keep it current, list what to review."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carelink.cli.codes import EXIT_OK

if TYPE_CHECKING:
    from carelink.federation import UpdateReport
    from carelink.settings import Settings
    from carelink.storage import IndexStore


def index(args: argparse.Namespace) -> int:
    from carelink.settings import Settings
    from carelink.storage import IndexStore

    settings = Settings.from_env()
    db = settings.database(batch=True)
    db.migrate()
    store = IndexStore(db)
    if args.index_command == "review":
        for r in store.reviews():
            print(f"{r.source}/{r.local_id} -> {r.candidate_id or '-'}: {r.explanation}")
        return EXIT_OK
    if args.index_command == "update":
        return _index_update(args, settings, store)
    from carelink.offline import build_index_from

    report = asyncio.run(build_index_from(settings, store, _build_progress()))
    print(
        f"index built: {report.persons} persons; linked by NHS number {report.by_nhs_number}, "
        f"by demographics {report.by_demographics}; unmatched {report.unmatched} "
        f"({report.review} for review); records per source {report.records}"
    )
    if report.invalid_nhs_records:
        where = ", ".join(f"{s}/{local}" for s, local in report.invalid_nhs_records)
        print(
            f"{report.invalid_nhs_numbers} NHS number(s) failed the check digit and were "
            f"not used for linking: {where}"
        )
    if report.kept_apart_same_source or report.kept_apart_nhs_number:
        print(
            f"matches kept apart (see index review): {report.kept_apart_same_source} within "
            f"one source, {report.kept_apart_nhs_number} with different NHS numbers"
        )
    if report.unlisted_near_misses:
        print(
            f"{report.unlisted_near_misses} further near miss(es) not listed for review: "
            "both records already have a review entry"
        )
    if report.conflicts:
        print(f"merged Patients where sources disagree, per element: {report.conflicts}")
    if report.unkeyable:
        print(
            "records not indexed: their id is longer than the index holds (records per "
            f"source): {report.unkeyable}"
        )
    if report.left_out:
        print(
            "demographics too long for the index, left out of linkage and search (records "
            f"per field; their Patients are served as sent): {report.left_out}"
        )
    return EXIT_OK


def _build_progress() -> Callable[[str, int, int | None], None]:
    """A rich progress bar per build stage, with its rate and (once known) time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} records/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, rate="")
        task = tasks[stage]
        bar.update(task, completed=done, total=total)
        speed = bar.tasks[task].speed
        bar.update(task, rate=f"{speed:,.0f}" if speed else "")
        if stage == "writing" and total is not None and done >= total:
            bar.stop()

    return progress


def _index_update(args: argparse.Namespace, settings: Settings, store: IndexStore) -> int:
    from carelink.federation.keeper import keep_current
    from carelink.offline import reconcile_from, update_index_from

    async def once() -> UpdateReport:
        report = await update_index_from(settings, store)
        if args.reconcile:
            drifts = await reconcile_from(settings, store, args.fix)
            for name, drift in drifts.items():
                print(
                    f"drift at {name}: {drift.listed} listed, {drift.missing} not in the index, "
                    f"{drift.gone} no longer listed, {drift.changed} with other demographics"
                    + (
                        f", {drift.unlisted} missed by the listing but held (kept)"
                        if drift.unlisted
                        else ""
                    )
                    + (" (applied)" if drift.fixed else ""),
                    flush=True,
                )
        return report

    def said(report: UpdateReport) -> None:
        applied = report.applied
        if applied is not None:
            print(
                f"index updated: {sum(report.listed.values())} changed records listed "
                f"{report.listed}; {applied.persons_before} people re-linked into "
                f"{applied.persons_after} in {applied.seconds:.2f} s"
                + (f"; {len(applied.unknown)} named records unknown" if applied.unknown else "")
                + (
                    f"; not indexed, id longer than the index holds: {applied.unkeyable}"
                    if applied.unkeyable
                    else ""
                ),
                flush=True,
            )

    if not args.every:
        said(asyncio.run(once()))
        return EXIT_OK
    # supervised: a failed update is logged and retried with a growing pause, never fatal
    asyncio.run(keep_current(once, args.every, done=said))
    return EXIT_OK
