"""Keeping the live index up to date: changes from each source, and drift checks.

``update_from`` asks every source that can list its changes
(``sources.base.ChangeLister``) for the records made or changed since that
source's watermark (the instant its last listing began; a build sets it to
the instant the build began reading), turns them into ``changes.Change``
values and applies them. ``reconcile`` compares a source's whole listing with
the index and reports drift: records the index lacks, records it holds that
the source no longer lists, records whose demographics differ; with ``fix``
it applies what it found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from carelink.federation.changes import (
    Change,
    ChangeReport,
    MergeRecords,
    Remove,
    Upsert,
    apply_changes,
    record_of,
)
from carelink.federation.linkage import demographics
from carelink.sources.base import ChangeLister, Source, SourcePerson
from carelink.storage import IndexStore

#: a listing starts this much before the last one began, so a change stamped while the
#: last listing was being read (or by a clock a little behind) is not missed
OVERLAP = timedelta(seconds=2)


def watermark_key(source: str) -> str:
    """The index setting holding a source's watermark."""
    return f"watermark:{source}"


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _change(p: SourcePerson, store: IndexStore) -> Change:
    """A listed record as a change: a merge when it was replaced by another record."""
    if p.patient.get("active") is False:
        for lk in p.patient.get("link", []):
            ref = str((lk.get("other") or {}).get("reference", ""))
            survivor = store.link_by_patient_id(ref.removeprefix("Patient/"))
            if lk.get("type") == "replaced-by" and survivor is not None:
                return MergeRecords(p.source, p.local_id, survivor.local_id)
        return Remove(p.source, p.local_id)
    return Upsert(p)


@dataclass
class UpdateReport:
    """Per source: records listed as changed since the watermark, and what applying did."""

    listed: dict[str, int] = field(default_factory=dict)
    applied: ChangeReport | None = None


async def update_from(
    sources: Sequence[Source],
    store: IndexStore,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> UpdateReport:
    """Apply every change the sources list since their watermarks; move the watermarks."""
    report = UpdateReport()
    changes: list[Change] = []
    marks: dict[str, str] = {}
    for source in sources:
        if not isinstance(source, ChangeLister):
            continue
        started = instant(now() - OVERLAP)
        since = store.setting(watermark_key(source.name))
        if since is None:
            continue  # never built from this source: a build lists everyone
        listed = [p async for p in source.changed_since(since)]
        report.listed[source.name] = len(listed)
        changes += [_change(p, store) for p in listed]
        marks[source.name] = started
    report.applied = apply_changes(store, changes, now) if changes else ChangeReport()
    for name, mark in marks.items():
        store.set_setting(watermark_key(name), mark)
    return report


def mark_built(store: IndexStore, sources: Sequence[Source], started: datetime) -> None:
    """After a build: each source's changes are wanted from when the build began reading."""
    for source in sources:
        store.set_setting(watermark_key(source.name), instant(started - OVERLAP))


@dataclass
class Drift:
    """How far the index has drifted from one source."""

    listed: int = 0
    missing: int = 0  # listed by the source, not in the index
    gone: int = 0  # in the index, no longer listed
    changed: int = 0  # in both, demographics differ
    fixed: ChangeReport | None = None


async def reconcile(
    source: Source, store: IndexStore, fix: bool = False, batch: int = 1000
) -> Drift:
    """Compare the source's whole listing with the index (``fix``: apply the difference)."""
    drift = Drift()
    pending: list[SourcePerson] = []
    changes: list[Change] = []

    def check() -> None:
        for p in pending:
            row = store.link(p.source, p.local_id)
            if row is None:
                drift.missing += 1
                changes.append(Upsert(p))
            elif demographics(record_of(row)) != demographics(p):
                drift.changed += 1
                changes.append(Upsert(p))
        pending.clear()

    async for p in source.people():
        if p.patient.get("active") is False:
            continue  # merged away or closed: the index should not hold it
        drift.listed += 1
        pending.append(p)
        if len(pending) >= batch:
            check()
    check()
    held = store.counts().get(f"links:{source.name}", 0)
    drift.gone = max(0, held - (drift.listed - drift.missing))
    if fix and changes:
        drift.fixed = apply_changes(store, changes)
    return drift
