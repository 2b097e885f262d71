"""Keeping the live index up to date: changes from each source, and drift checks.

``update_from`` asks every source that can list its changes
(``sources.base.ChangeLister``) for the records made or changed since that
source's watermark (the instant its last listing began; a build sets it to
the instant the build began reading), and every source read from a cursor
(``sources.base.CursorLister``: the stored HL7 v2 feed) for the records changed
by what was stored after its cursor; it turns them into ``changes.Change``
values and applies them, and only then moves the watermarks and cursors, so a
process that dies in between lists the same changes again (applying a change
twice changes nothing). Each source's turn holds a lock of that source
(PostgreSQL advisory lock), so updates running in several processes apply one
source's changes in the order it made them. ``reconcile`` compares a source's whole listing with
the index and reports drift: records the index lacks, records it holds that
the source no longer lists, records whose demographics differ; with ``fix``
it applies what it found, removals included (found by walking the index's
links of that source page by page).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from carelink.federation.changes import (
    Change,
    ChangeReport,
    MergeRecords,
    NhsNumberSuperseded,
    Remove,
    Upsert,
    apply_changes,
    record_of,
)
from carelink.federation.linkage import demographics
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import ChangeLister, CursorLister, HoldsCheck, Source, SourcePerson
from carelink.storage import IndexStore

#: a listing starts this much before the last one began, so a change stamped while the
#: last listing was being read (or by a clock a little behind) is not missed
OVERLAP = timedelta(seconds=2)


#: the most times an update reads one change listing that moved while it was read
#: (``_listed``); after that its watermark stays, and the next update reads again
LISTING_READS = 3


#: the most changes read from a cursor source in one update (the next update goes on)
CURSOR_BATCH = 2000


def watermark_key(source: str) -> str:
    """The index setting holding a source's watermark."""
    return f"watermark:{source}"


def cursor_key(source: str) -> str:
    """The index setting holding a cursor source's cursor."""
    return f"cursor:{source}"


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _change(p: SourcePerson, store: IndexStore) -> list[Change]:
    """A listed record as changes: a merge when it was replaced by another record, a
    removal when it is closed; else the record, after the supersession of an NHS number
    it keeps as ``old`` (so the index's other records of that number follow it)."""
    if p.patient.get("active") is False:
        for lk in p.patient.get("link", []):
            ref = str((lk.get("other") or {}).get("reference", ""))
            survivor = store.link_by_patient_id(ref.removeprefix("Patient/"))
            if lk.get("type") == "replaced-by" and survivor is not None:
                return [MergeRecords(p.source, p.local_id, survivor.local_id)]
        return [Remove(p.source, p.local_id)]
    old = {
        str(i.get("value"))
        for i in p.patient.get("identifier", [])
        if i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") == "old" and i.get("value")
    }
    out: list[Change] = []
    if p.nhs_number:
        out += [NhsNumberSuperseded(o, p.nhs_number) for o in sorted(old - {p.nhs_number})]
    return [*out, Upsert(p)]


def _stamp(p: SourcePerson) -> datetime:
    """When the source says the record was last changed (the earliest instant if unsaid)."""
    try:
        moment = datetime.fromisoformat(
            str(p.patient["meta"]["lastUpdated"]).replace("Z", "+00:00")
        )
    except (KeyError, TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def held_mark(listed: Sequence[SourcePerson], since: str, mark: str) -> str:
    """The watermark a change listing read whole lets an update move to: ``mark`` (when
    the listing began, less the overlap), or ``since`` when a record was listed twice.

    A change listing holds each record once, at its latest change, oldest first, and is
    read a page at a time by offset (the sources' own idiom). A record changed again
    while it is read moves from a page already read to the end, and every record after
    its old place moves up one: the record the next page would have begun with is now on
    a page already read, and is never seen. The last record so moved is always seen
    again at the end (a move after it would be of a record read later still), so a read
    that saw no record twice lost none. One that did may have lost records anywhere
    after its first page, the earlier movers' new places included: nothing it read
    bounds them (the hypothesis test of this found a hold at the first mover's earlier
    change too late), so the mark stays where the listing began and the next update
    reads it again whole (a change applied twice changes nothing)."""
    seen: set[str] = set()
    for p in listed:
        if p.echo:
            continue  # carried by another's entry (an A40's survivor): not an entry
        if p.local_id in seen:
            return since
        seen.add(p.local_id)
    return mark


async def _listed(
    source: ChangeLister, since: str, now: Callable[[], datetime]
) -> tuple[list[SourcePerson], str, int]:
    """What ``source`` lists as changed after ``since``, the watermark that allows
    (``held_mark``), and how many entries its last read held: read again, up to
    ``LISTING_READS`` times in all, while each read lists a record twice (and may have
    skipped one), so a busy source's watermark still moves when a later read is
    undisturbed. Every read's records are kept (``newest`` picks each record's latest).
    A source that lists some record twice in every listing, moved or not, cannot be told
    from one that moved: its watermark stays, and each update reads from there."""
    listed: list[SourcePerson] = []
    mark, read = since, []
    for _ in range(LISTING_READS):
        began = instant(now() - OVERLAP)
        read = [p async for p in source.changed_since(since)]
        listed += read
        mark = held_mark(read, since, began)
        if mark == began:
            break
    return listed, mark, len(read)


def newest(listed: Sequence[SourcePerson]) -> list[SourcePerson]:
    """One version of each record: of a record listed more than once (listings overlap, a
    page repeats, a source lists out of order), the one its source changed last
    (``meta.lastUpdated``; when that ties or is unsaid, the one listed last)."""
    kept: dict[str, SourcePerson] = {}
    for p in listed:
        had = kept.get(p.local_id)
        if had is None or _stamp(p) >= _stamp(had):
            kept.pop(p.local_id, None)
            kept[p.local_id] = p
    return list(kept.values())


@dataclass
class UpdateReport:
    """Per source: records listed as changed since the watermark, and what applying did."""

    listed: dict[str, int] = field(default_factory=dict)
    applied: ChangeReport | None = None
    #: a cursor source had more stored than one update reads: update again now
    behind: bool = False


async def update_from(
    sources: Sequence[Source],
    store: IndexStore,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> UpdateReport:
    """Apply every change the sources list since their watermarks; move the watermarks.

    Each source in turn, holding its lock (``IndexStore.applying``) from reading its mark
    to moving it: two processes updating at once apply one source's changes one after
    the other, each from where the last left off, never an older listing last."""
    report = UpdateReport()
    for source in sources:
        if not isinstance(source, CursorLister | ChangeLister):
            continue
        with store.applying(source.name):
            if isinstance(source, CursorLister):
                mark_key = cursor_key(source.name)
                cursor = store.setting(mark_key) or ""
                listed, mark = await source.changes_after(cursor, CURSOR_BATCH)
                report.behind = report.behind or mark != cursor
                count = len(listed)
            else:
                mark_key = watermark_key(source.name)
                since = store.setting(mark_key)
                if since is None:
                    continue  # never built from this source: a build lists everyone
                listed, mark, count = await _listed(source, since, now)
            report.listed[source.name] = count
            changes: list[Change] = []
            for p in newest(listed):
                changes += _change(p, store)
            if changes:
                report.applied = _added(report.applied, apply_changes(store, changes, now))
            store.set_setting(mark_key, mark)
    if report.applied is None:
        report.applied = ChangeReport()
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
    #: in the index and on no page of the listing, yet held by the source when asked
    #: alone (``HoldsCheck``): the listing moved under its read; not counted as gone
    unlisted: int = 0
    fixed: ChangeReport | None = None


async def reconcile(
    source: Source, store: IndexStore, fix: bool = False, batch: int = 1000
) -> Drift:
    """Compare the source's whole listing with the index (``fix``: apply the difference).

    The source's local ids are kept as a set while it is listed; the index's links of
    the source are then walked ``batch`` at a time, so the index is never read whole. A
    record the listing lacked is gone only if the source, asked of it alone, says so
    (``HoldsCheck``): a listing read by offset while one person is registered and
    another removed skips the person at a page's edge, its total unchanged, and
    ``fix`` retired them.
    With ``fix`` the changes are applied ``batch`` at a time too."""
    drift = Drift()
    pending: list[SourcePerson] = []
    changes: list[Change] = []
    seen: set[str] = set()

    def apply(final: bool = False) -> None:
        if fix and changes and (final or len(changes) >= batch):
            drift.fixed = _added(drift.fixed, apply_changes(store, changes))
            changes.clear()

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
        apply()

    async for p in source.people():
        if p.patient.get("active") is False:
            continue  # merged away or closed: the index should not hold it
        drift.listed += 1
        seen.add(p.local_id)
        pending.append(p)
        if len(pending) >= batch:
            check()
    check()
    after = ""
    asks = source if isinstance(source, HoldsCheck) else None
    while page := store.local_ids(source.name, after, batch):
        for local in page:
            if local in seen:
                continue
            if asks is not None and await asks.holds(local):
                drift.unlisted += 1  # skipped by a listing that moved: never retired
                continue
            drift.gone += 1
            changes.append(Remove(source.name, local))
        after = page[-1]
        apply()  # the walk goes on by local id: a removal does not move it
    apply(final=True)
    return drift


def _added(total: ChangeReport | None, more: ChangeReport) -> ChangeReport:
    """Two reports of applying changes as one."""
    if total is None:
        return more
    total.changes += more.changes
    total.records += more.records
    total.persons_before += more.persons_before
    total.persons_after += more.persons_after
    total.seconds = round(total.seconds + more.seconds, 3)
    total.unknown += more.unknown
    return total
