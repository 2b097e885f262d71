"""The streaming index build: memory that does not grow with the population.

``link_people`` (``index.py``) links a population held in memory; at the
scale of an ICS that is millions of records held several times over. The
build here gives the same index while holding only what linking needs:

1. **Stage.** Every source is read concurrently; each record goes to the
   database's staging table in batches (bulk loaded) with its group: its
   valid NHS number, or itself. Only records *without* a valid NHS number
   are kept in memory (a few per cent of them).
2. **Block.** Demographic linking only ever compares pairs where at least
   one record lacks a valid NHS number. So the staged records' linking
   fields are streamed once and kept only when they share a blocking key
   with a record without a number; blocks over the cap are noted.
3. **Link.** ``linkage.link`` runs on that neighbourhood: the records
   without numbers, and every record of each NHS number they met (so the
   rules that keep numbers and sources apart see whole people). Its result
   for those records is the result the whole population would give, since
   no other pair would be compared. Records that join someone are
   re-grouped in the staging table.
4. **Write.** The staged records are streamed back in group order; each
   group becomes a person (``index.person_rows``), bulk loaded into new
   tables, which are indexed and swapped in for the live ones at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.errors import SourceBadPayload
from carelink.federation.index import BuildReport, fields_row, group_id, person_rows
from carelink.federation.linkage import Group, demographics, link, valid_nhs
from carelink.federation.matching import BLOCK_CAP, Demographics, blocking_keys
from carelink.federation.update import mark_built
from carelink.sources.base import HoldsCheck, Source, SourcePerson
from carelink.storage import Database, FieldsRow, IndexBuild, IndexStore, ReviewRow

#: ``progress(stage, done, total)``: stage is "reading", "linking" or "writing";
#: total is None while it is not known
Progress = Callable[[str, int, int | None], None]


def _quiet(stage: str, done: int, total: int | None) -> None:
    return None


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Keep the cyclic garbage collector from walking the whole heap over and over.

    A build makes millions of objects that live a page or a batch long; each of
    Python's full collections walks every object the process holds, and at the
    default thresholds they came often enough to take a third of a 100,000-person
    build's CPU. Meanwhile what the process held before the build is frozen (left
    out of collections until the end) and a collection waits for 50,000 new
    objects rather than 700. Both are put back as they were afterwards."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(before[0], 50_000), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def part_of(grp: str, parts: int) -> int:
    """Which writer process a group goes to (the same part for all its records)."""
    return zlib.crc32(grp.encode()) % parts


def _staged(p: SourcePerson, nhs: str | None, parts: int) -> tuple[Any, ...]:
    grp = f"n:{nhs}" if nhs else f"r:{p.source}:{p.local_id}"
    method = "nhs-number" if nhs else "unmatched"
    return (
        p.source,
        p.local_id,
        nhs,
        grp,
        method,
        None,
        p.given,
        p.family,
        p.birth_date,
        p.gender,
        p.postcode,
        orjson.dumps(p.patient),
        part_of(grp, parts),
    )


def _person(row: Sequence[Any]) -> SourcePerson:
    """A staged row (``STAGED_COLUMNS``) back as the record it was."""
    source, local, nhs, _, _, _, given, family, birth, gender, postcode, patient, _ = row
    return SourcePerson(
        source, local, nhs, given, family, birth, gender, postcode, None, orjson.loads(patient)
    )


async def _read(
    sources: Sequence[Source],
    build: IndexBuild,
    report: BuildReport,
    progress: Progress,
    parts: int = 1,
) -> list[SourcePerson]:
    """Stage every record; return those without a valid NHS number."""
    loose: list[SourcePerson] = []
    left_out: Counter[str] = Counter()
    unkeyable: Counter[str] = Counter()
    lock = asyncio.Lock()
    read = 0

    async def flush(batch: list[tuple[Any, ...]]) -> None:
        nonlocal read
        async with lock:  # one writer; the event loop keeps reading meanwhile
            await asyncio.to_thread(build.stage, batch)
            read += len(batch)
            progress("reading", read, None)

    async def one(source: Source) -> None:
        batch: list[tuple[Any, ...]] = []
        count = 0
        async for p in source.people():
            count += 1
            if not p.keyable:
                unkeyable[source.name] += 1
                continue
            for name in p.left_out:
                left_out[name] += 1
            nhs = valid_nhs(p)
            if nhs is None:
                loose.append(replace(p, patient={}))  # the Patient stays staged
                if p.nhs_number:
                    report.invalid_nhs_records.append((p.source, p.local_id))
            batch.append(_staged(p, nhs, parts))
            if len(batch) >= build.batch:
                await flush(batch)
                batch = []
        await flush(batch)
        report.records[source.name] = count

    await asyncio.gather(*(one(s) for s in sources))
    report.records = dict(sorted(report.records.items()))
    report.invalid_nhs_records.sort()
    report.invalid_nhs_numbers = len(report.invalid_nhs_records)
    report.left_out = dict(sorted(left_out.items()))
    report.unkeyable = dict(sorted(unkeyable.items()))
    return loose


def _neighbours(
    build: IndexBuild, loose: Sequence[SourcePerson]
) -> tuple[set[str], frozenset[str]]:
    """NHS numbers sharing a usable block with a record without one; blocks over the cap."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(loose):
        for k in set(blocking_keys(demographics(p))):
            wanted[k].append(i)
    sizes: Counter[str] = Counter({k: len(v) for k, v in wanted.items()})
    hits: dict[str, list[str]] = defaultdict(list)
    for nhs, given, family, birth, gender, postcode in build.linking_fields():
        for k in set(blocking_keys(Demographics(given, family, birth, gender, postcode))):
            if k in wanted:
                sizes[k] += 1
                if sizes[k] <= BLOCK_CAP:
                    hits[k].append(nhs)
    oversized = frozenset(k for k, n in sizes.items() if n > BLOCK_CAP)
    numbers = {n for k, ns in hits.items() if k not in oversized for n in ns}
    return numbers, oversized


def _link(
    build: IndexBuild,
    loose: Sequence[SourcePerson],
    key: bytes,
    report: BuildReport,
    parts: int = 1,
) -> list[ReviewRow]:
    """Link the records without NHS numbers; re-group them in staging; the review rows."""
    numbers, oversized = _neighbours(build, loose)
    # their records' linking fields only (the Patients stay staged until writing)
    known = [
        SourcePerson(source, local, nhs, given, family, birth, gender, postcode, None, {})
        for source, local, nhs, given, family, birth, gender, postcode in build.with_nhs_numbers(
            sorted(numbers)
        )
    ]
    by_source: dict[str, list[SourcePerson]] = defaultdict(list)
    for p in [*loose, *known]:
        by_source[p.source].append(p)
    linkage = link(by_source, oversized)
    owner: dict[tuple[str, str], str] = {}
    changes: list[tuple[str, str | None, float | None, int, str, str]] = []
    for group in linkage.groups:
        owner.update(((m.source, m.local_id), group_id(key, group)) for m in group.members)
        first = group.members[0]
        grp = f"n:{group.nhs_number}" if group.nhs_number else f"r:{first.source}:{first.local_id}"
        for m in group.members:
            method, score = linkage.methods[(m.source, m.local_id)]
            if method != "nhs-number":
                changes.append((grp, method, score, part_of(grp, parts), m.source, m.local_id))
    build.regroup(changes)
    methods = Counter(linkage.methods[(p.source, p.local_id)][0] for p in loose)
    report.by_demographics = methods["demographic"]
    report.unmatched = methods["unmatched"]
    report.kept_apart_same_source = linkage.kept_apart_same_source
    report.kept_apart_nhs_number = linkage.kept_apart_nhs_number
    report.unlisted_near_misses = linkage.unlisted_near_misses
    report.oversized_blocks = len(oversized)
    counts = [linkage.candidates[(p.source, p.local_id)] for p in loose]
    report.candidates_mean = round(sum(counts) / len(counts), 2) if counts else 0.0
    report.candidates_max = max(counts, default=0)
    return [
        ReviewRow(
            n.record.source,
            n.record.local_id,
            owner[(n.other.source, n.other.local_id)],
            n.score.total,
            n.explain(),
            orjson.dumps(vars(demographics(n.record))).decode(),
        )
        for n in linkage.near_misses
    ]


def _groups(rows: Iterable[tuple[Any, ...]]) -> Iterable[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive rows of one group."""
    current: str | None = None
    members: list[tuple[Any, ...]] = []
    for row in rows:
        if row[3] != current and members:
            yield str(current), members
            members = []
        current = row[3]
        members.append(row)
    if members:
        yield str(current), members


def _write(
    build: IndexBuild,
    key: bytes,
    built_at: str,
    part: int = 0,
    progress: Callable[[int], None] = lambda done: None,
) -> tuple[int, dict[str, int]]:
    """Every group of one part as a person, bulk loaded into the new tables; returns
    how many people and the merged Patients' conflicts per element."""
    conflicts: Counter[str] = Counter()
    people, links = [], []
    fields: list[FieldsRow] = []
    persons = done = 0
    for grp, rows in _groups(build.by_group(part)):
        members = tuple(_person(r) for r in rows)
        fields.extend(fields_row(m, r[2]) for m, r in zip(members, rows, strict=True))
        methods = {(r[0], r[1]): (r[4], r[5]) for r in rows}
        nhs = grp[2:] if grp.startswith("n:") else None
        person, person_links = person_rows(key, Group(members, nhs), methods, built_at, conflicts)
        people.append(person)
        links.extend(person_links)
        persons += 1
        if len(links) >= build.batch:
            build.load("persons", people)
            build.load("person_links", links)
            build.load("record_fields", fields)
            done += len(links)
            progress(done)
            people, links, fields = [], [], []
    build.load("persons", people)
    build.load("person_links", links)
    build.load("record_fields", fields)
    return persons, dict(conflicts)


class _Shared:
    """What the writer processes share: the SQLite write lock and how many links are
    written (set in each process by ``_start_writer``)."""

    lock: Any = None
    written: Any = None


def _start_writer(lock: Any, written: Any) -> None:
    _Shared.lock, _Shared.written = lock, written


def _count_written(done: int) -> None:
    with _Shared.written.get_lock():
        _Shared.written.value += done


#: a build of fewer records makes its people in the building process whatever the
#: writers asked for: a writer process (a new interpreter and its imports) costs about
#: a second, more than it saves below this (at 10,000 people, 17,209 records, two wrote
#: in 1.73 s and one in 1.20 s; benchmarks/README.md, "The eighteenth stop")
PROCESSES_FROM = 50_000


#: the most writer processes a build uses unless told (``CARELINK_INDEX_WRITERS``): each
#: holds ~150 MB at the full test range, and with the building process two stayed under
#: the 1 GB a build may take (880-924 MB all at once), four did not (1,225 MB;
#: benchmarks/README.md, "The nineteenth stop")
MOST_WRITERS = 2


def writer_processes(cores: int | None, most: int = MOST_WRITERS) -> int:
    """How many processes make the people of a build on a machine of ``cores`` cores
    (None: unknown): one a core, at most ``most``, on either database. The merge of each
    person's Patient is CPU; on SQLite the writers take turns only for their inserts
    (``IndexBuild``'s shared lock). At the full test range on two cores, SQLite wrote in
    83.0 s with two and 136.3 s with one (benchmarks/README.md, "The eighteenth stop")."""
    return max(1, min(most, cores or 1))


def peak_kb() -> int:
    """This process's peak resident memory, in KB, since it started its program
    (``VmHWM``; ``ru_maxrss`` would count what a forked child held before its ``exec``,
    the whole builder's memory for a spawned writer); 0 where ``/proc`` does not say."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def write_part(
    url: str, part: int, key: bytes, built_at: str, batch: int
) -> tuple[int, dict[str, int], int]:
    """``_write`` in a process of its own, attached to the build in database ``url``;
    with the process's peak memory (``peak_kb``)."""
    db = Database(url)
    build = IndexBuild(db, batch, attach=True, lock=_Shared.lock)
    reported = 0

    def progress(done: int) -> None:
        nonlocal reported
        _count_written(done - reported)
        reported = done

    try:
        with few_collections():
            persons, conflicts = _write(build, key, built_at, part, progress)
        return persons, conflicts, peak_kb()
    finally:
        build.close()
        db.dispose()


async def _write_all(
    build: IndexBuild,
    key: bytes,
    built_at: str,
    report: BuildReport,
    progress: Progress,
    parts: int,
    processes_from: int = PROCESSES_FROM,
) -> None:
    """Write every part: one process each, or all in this process, one after another,
    when there is one part or fewer than ``processes_from`` records."""
    total = sum(report.records.values())
    build.index_groups()
    results: list[tuple[int, dict[str, int]]] = []
    if parts == 1 or total < processes_from:

        def write_here() -> None:
            before = latest = 0  # the links the parts before this one wrote (as reported)

            def report_part(done: int) -> None:
                nonlocal latest
                latest = done
                progress("writing", before + done, total)

            for part in range(parts):
                results.append(_write(build, key, built_at, part, report_part))
                before, latest = before + latest, 0

        await asyncio.to_thread(write_here)
    else:
        loop = asyncio.get_running_loop()
        spawn = multiprocessing.get_context("spawn")
        written = spawn.Value("q", 0)
        with ProcessPoolExecutor(
            max_workers=parts,
            mp_context=spawn,
            initializer=_start_writer,
            initargs=(spawn.Lock(), written),
        ) as pool:
            futures = [
                loop.run_in_executor(
                    pool, write_part, build.db.url, part, key, built_at, build.batch
                )
                for part in range(parts)
            ]
            while not all(f.done() for f in futures):
                await asyncio.wait(futures, timeout=1.0)
                progress("writing", written.value, total)
            made = [f.result() for f in futures]
            results = [(persons, conflicts) for persons, conflicts, _ in made]
            report.writer_peak_mb = round(max(peak for _, _, peak in made) / 1024)
    conflicts: Counter[str] = Counter()
    for persons, counted in results:
        report.persons += persons
        conflicts.update(counted)
    progress("writing", total, total)
    report.by_nhs_number = total - report.by_demographics - report.unmatched
    report.conflicts = dict(sorted(conflicts.items()))


#: how many records of one source are asked after at once (``_none_skipped``)
ASKED_AT_ONCE = 8


async def _none_skipped(sources: Sequence[Source], build: IndexBuild) -> None:
    """Fail the build (``SourceBadPayload``: the live index as it was) when a source's
    listing lacked a record the live index links and the source, asked of it alone
    (``HoldsCheck``), still holds: a listing read by offset while the source removed one
    person and registered another skips the person at a page's edge, its total
    unchanged, and the build had dropped a person the source holds from the index
    (found again only by a reconcile). The records asked after are those gone since the
    last build, and any skipped; ``ASKED_AT_ONCE`` at a time."""
    limit = asyncio.Semaphore(ASKED_AT_ONCE)
    for source in sources:
        if not isinstance(source, HoldsCheck):
            continue
        asks = source

        async def held(local: str, asks: HoldsCheck = asks) -> bool:
            async with limit:
                return await asks.holds(local)

        after = ""
        while page := await asyncio.to_thread(build.unlisted, source.name, after):
            found = await asyncio.gather(*(held(local) for local in page))
            if any(found):
                raise SourceBadPayload(
                    source.name,
                    f"its listing lacked {sum(found)} record(s) it still holds (it changed "
                    "while it was read): the index is unchanged; build again",
                )
            after = page[-1]


async def build_index(
    sources: Sequence[Source],
    store: IndexStore,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    *,
    refuse_empty: bool = False,
    writers: int = 1,
    batch: int = 5000,
    processes_from: int = PROCESSES_FROM,
) -> BuildReport:
    """Read every source, link, and swap the new index in for the old one at once.

    With ``refuse_empty``, a source that gave no patient records at all is a
    ``SourceBadPayload`` naming it, and the stored index is left as it was: such a
    source is almost always a URL pointing at the wrong kind of system.

    ``writers`` > 1 makes the people in that many processes (the merge of each
    person's Patient is most of a build's work once the sources are read), when the
    sources gave ``processes_from`` records or more. Rows go to and from the database
    ``batch`` at a time."""
    key = store.secret()
    started = now()
    built_at = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    progress = progress or _quiet
    report = BuildReport()
    build = IndexBuild(store.db, batch)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        report.seconds[stage] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    with few_collections():
        try:
            await asyncio.to_thread(build.remember_live)
            loose = await _read(sources, build, report, progress, writers)
            await asyncio.to_thread(build.all_staged)
            await _none_skipped(sources, build)
            lap("reading")
            empty = [s.name for s in sources if refuse_empty and not report.records.get(s.name)]
            if empty:
                raise SourceBadPayload(
                    empty[0],
                    "no patient records were read: is the URL that of this kind of system? "
                    "(the index is unchanged)",
                )
            progress("linking", 0, None)
            reviews = await asyncio.to_thread(_link, build, loose, key, report, writers)
            del loose
            lap("linking")
            await _write_all(build, key, built_at, report, progress, writers, processes_from)
            build.load("match_review", reviews)
            report.review = len(reviews)
            lap("writing")
            report.successors, report.seconds["retiring"] = await asyncio.to_thread(
                build.swap, built_at
            )
            lap("swap")
            report.cleared = await asyncio.to_thread(build.clear_gone)
            lap("clearing")
        finally:
            build.close()
    mark_built(store, sources, started)
    return report
