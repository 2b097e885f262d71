"""Changes at a source applied to the live index, without a rebuild.

A change names the records it touches; ``apply_changes`` re-links only the
people those records belong to, or could belong to, with the same rules as a
build (``linkage.link``), and replaces those people in one transaction.
Everyone else is left alone. "Could belong to" is closed: the person holding
a record now, the person holding its NHS number, every record it could be
linked with (found through the linking fields the index keeps per record,
``record_fields``), and so on from each of those, until nothing is added.

Kinds of change:

- ``Upsert``: a record is new, or its demographics changed;
- ``Remove``: a record is gone from its source;
- ``MergeRecords``: a source merged two of its records into one (HL7 v2
  ADT^A40: the ``old`` local id is gone, its person is ``into``);
- ``NhsNumberSuperseded``: PDS replaced an NHS number; every record holding
  the old number now holds the new one.

A rebuild from the same sources gives the same people
(``tests/federation/test_update_is_rebuild.py``), block cap included: a block
that the whole population fills past ``matching.BLOCK_CAP`` is skipped by a
build, so an update counts, in the index, every block its re-linked records
hold and skips those the population (after the changes) fills past the cap; and
when the changes take a block across the cap, one way or the other, every
record in it is re-linked (pairs in it appear or vanish). ``reconcile``
(``federation.update``) reports drift from the sources.

A person id that an update retires (the person merged into another, or split)
is kept with the people its records went to (``person_successors``), so a
client that holds it is pointed on (``IndexStore.successors``). A rebuild does
the same at its swap (``storage.IndexBuild.swap``), from the records each old
id held to the new people holding them. Ids themselves are stable: a keyed hash
of the NHS number, or of the preferred record, so a rebuild keeps the id of
everyone whose records did not change.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.federation.index import fields_row, person_rows
from carelink.federation.linkage import demographics, link, record_keys, valid_nhs
from carelink.federation.matching import (
    BLOCK_CAP,
    REVIEW_THRESHOLD,
    Demographics,
    blocking_keys,
    key_value,
    lookup_values,
    score,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import SourcePerson, holdable_key, indexed
from carelink.storage import FieldsRow, IndexStore, LinkRow, ReviewRow


@dataclass(frozen=True)
class Upsert:
    """A new record, or new demographics for a known one."""

    record: SourcePerson


@dataclass(frozen=True)
class Remove:
    """A record its source no longer holds."""

    source: str
    local_id: str


@dataclass(frozen=True)
class MergeRecords:
    """A source merged record ``old`` into record ``into`` (HL7 v2 ADT^A40)."""

    source: str
    old: str
    into: str


@dataclass(frozen=True)
class NhsNumberSuperseded:
    """An NHS number replaced by another (a PDS-style supersession)."""

    old: str
    new: str


Change = Upsert | Remove | MergeRecords | NhsNumberSuperseded


@dataclass
class ChangeReport:
    """What applying changes did (counts, no patient data)."""

    changes: int = 0
    records: int = 0  # records re-linked
    persons_before: int = 0  # people replaced
    persons_after: int = 0  # people they became
    seconds: float = 0.0
    #: (source, local id) of changes naming a record the index does not hold
    unknown: list[tuple[str, str]] = field(default_factory=list)
    #: new or changed records not indexed: their key is longer than the index holds
    #: (``SourcePerson.keyable``), per source
    unkeyable: dict[str, int] = field(default_factory=dict)


def record_of(row: LinkRow) -> SourcePerson:
    """The source record a link was made from (demographics read from its Patient)."""
    patient: dict[str, Any] = orjson.loads(row.patient)
    patient.pop("link", None)
    return indexed(row.source, row.local_id, patient)


def _renumbered(p: SourcePerson, new: str) -> SourcePerson:
    patient = dict(p.patient)
    patient["identifier"] = [
        {**i, "value": new} if i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") != "old" else i
        for i in patient.get("identifier", [])
    ]
    return SourcePerson(**{**vars(p), "nhs_number": new, "patient": patient})


class _Neighbourhood:
    """The records an update re-links: closed under both "was one person with" (in the
    index now) and "could be linked with" (after the changes: one NHS number, or a
    shared blocking key with at least one end without a valid number and a score
    that reaches the review list). Linking a set closed so gives its records the
    people (and near misses) a rebuild gives them, since a rebuild's decisions about
    a record depend only on the records it could be linked with; everyone outside
    keeps their person."""

    def __init__(
        self,
        store: IndexStore,
        new: dict[tuple[str, str], SourcePerson],
        gone: set[tuple[str, str]],
    ) -> None:
        self.store, self.new, self.gone = store, new, gone
        self.persons: set[str] = set()
        self.records: dict[tuple[str, str], SourcePerson] = {}
        #: each re-linked record's person before the update
        self.was: dict[tuple[str, str], str] = {}
        self.todo: list[SourcePerson] = []
        #: the changed (or gone) records as the index held them
        self.old: list[SourcePerson] = []

    def add_persons(self, pids: Iterable[str]) -> None:
        fresh = sorted(set(pids) - self.persons)
        self.persons.update(fresh)
        for row in self.store.links_of_people(fresh):
            key = (row.source, row.local_id)
            self.was[key] = row.person_id
            if key in self.gone or key in self.new:
                self.old.append(record_of(row))
            if key not in self.gone:
                self.add_record(self.new.get(key) or record_of(row))

    def add_record(self, r: SourcePerson) -> None:
        key = (r.source, r.local_id)
        if key not in self.records:
            self.records[key] = r
            self.todo.append(r)

    def close(self) -> None:
        """Add what the records could be linked with, a wave at a time (a few queries a
        wave, whatever its size), until a wave adds nobody."""
        while self.todo:
            wave, self.todo = self.todo, []
            numbers = {n for r in wave if (n := valid_nhs(r))}
            found = set(self.store.people_by_nhs(sorted(numbers)).values())
            by_value: dict[str, list[tuple[SourcePerson, Demographics]]] = defaultdict(list)
            for r in wave:
                d = demographics(r)
                for tag, value in zip("dnp", lookup_values(d), strict=True):
                    if value:
                        by_value[tag + value].append((r, d))
            wanted: set[tuple[str, str]] = set()
            for f in self.store.near_any(by_value):
                key = (f.source, f.local_id)
                if key in self.records or key in self.gone or key in self.new or key in wanted:
                    continue  # changed records are in already, with their new fields
                theirs = fields_demographics(f)
                their_keys = set(blocking_keys(theirs))
                mine = {
                    id(r): (r, d)
                    for v in ("d" + f.day, "n" + f.names_ym, "p" + f.pc)
                    for r, d in by_value.get(v, ())
                }
                for r, d in mine.values():
                    if f.nhs and valid_nhs(r):
                        continue  # two valid numbers: decided by the numbers
                    if their_keys.isdisjoint(blocking_keys(d)):
                        continue
                    if score(d, theirs).total >= REVIEW_THRESHOLD:
                        wanted.add(key)
                        break
            found |= set(self.store.owners(sorted(wanted)).values())
            self.add_persons(found)


def fields_demographics(f: FieldsRow) -> Demographics:
    """What matching compares of a linked record's stored linking fields."""
    return Demographics(f.given, f.family, f.birth_date, f.gender, f.postcode)


def _lookups(d: Demographics) -> set[str]:
    """``IndexStore.near_any``'s tagged lookup values of some demographics."""
    return {tag + v for tag, v in zip("dnp", lookup_values(d), strict=True) if v}


@dataclass
class _Blocks:
    """Exact sizes of the blocks that may be over ``BLOCK_CAP``, before and after changes
    (``new`` records, ``gone`` ones), and the unchanged records in each. A block is never
    larger than the records sharing its key's lookup value, which the index counts
    through an index: only blocks whose lookup value is that common are read."""

    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    holders: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def over(self) -> frozenset[str]:
        """Blocks over the cap after the changes (a build skips them)."""
        return frozenset(k for k, n in self.after.items() if n > BLOCK_CAP)

    def crossed(self) -> list[tuple[str, str]]:
        """The unchanged records in every block the changes take across the cap."""
        keys = [
            k
            for k in self.before | self.after
            if (self.before[k] > BLOCK_CAP) != (self.after[k] > BLOCK_CAP)
        ]
        return sorted({h for k in keys for h in self.holders.get(k, ())})


def _blocks(
    store: IndexStore,
    demos: Iterable[Demographics],
    new: dict[tuple[str, str], SourcePerson],
    gone: set[tuple[str, str]],
) -> _Blocks:
    """The blocks of ``demos`` that may be over the cap, measured (``_Blocks``)."""
    value_of: dict[str, str] = {}
    for d in demos:
        values = lookup_values(d)
        for k in blocking_keys(d):
            value_of[k] = key_value(k, values)
    bound = Counter(store.value_counts(set(value_of.values())))
    for r in new.values():
        bound.update(_lookups(demographics(r)))
    risky = {v for v in value_of.values() if bound[v] > BLOCK_CAP}
    out = _Blocks()
    if not risky:
        return out
    wanted = {k for k, v in value_of.items() if v in risky}
    for f in store.near_any(risky):
        keys = set(blocking_keys(fields_demographics(f))) & wanted
        out.before.update(keys)
        key = (f.source, f.local_id)
        if key not in new and key not in gone:
            out.after.update(keys)
            for k in keys:
                out.holders.setdefault(k, []).append(key)
    for r in new.values():
        out.after.update(record_keys(r) & wanted)
    return out


def _fill_fields(store: IndexStore, batch: int = 2000) -> None:
    """Keep the linking fields of every linked record (an index built before they were
    kept): one walk over the links, once."""
    after = ("", "")
    while rows := store.links_after(after, batch):
        store.add_fields([fields_row(p, valid_nhs(p)) for p in map(record_of, rows)])
        after = (rows[-1].source, rows[-1].local_id)


def apply_changes(
    store: IndexStore,
    changes: Sequence[Change],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChangeReport:
    """Apply ``changes`` (in order) to the live index: re-link the people they touch, in
    one swap. A person id that goes is recorded with the people its records went to."""
    started = time.perf_counter()
    report = ChangeReport(changes=len(changes))
    key = store.secret()
    built_at = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    if store.fields_missing():
        _fill_fields(store)
    new: dict[tuple[str, str], SourcePerson] = {}
    gone: set[tuple[str, str]] = set()
    #: a record merged away -> the record it was merged into (its person's successor)
    merged: dict[tuple[str, str], tuple[str, str]] = {}
    # a key the index cannot hold names no record in it (and PostgreSQL takes no NUL to
    # compare): such a change is unknown, as below
    named = {k for c in changes for k in _named(c) if holdable_key(*k)}
    linked = store.owners(sorted(named))
    seeds: set[str] = set(linked.values())

    def known(source: str, local: str) -> bool:
        return (source, local) in linked or (source, local) in new

    for change in changes:
        if isinstance(change, Upsert):
            r = change.record
            if not r.keyable:  # never held, so there is nothing of it to change either
                report.unkeyable[r.source] = report.unkeyable.get(r.source, 0) + 1
                continue
            new[(r.source, r.local_id)] = r
            gone.discard((r.source, r.local_id))
        elif isinstance(change, Remove | MergeRecords):
            old = change.local_id if isinstance(change, Remove) else change.old
            if not known(change.source, old):
                report.unknown.append((change.source, old))
            if isinstance(change, MergeRecords):
                if not known(change.source, change.into):
                    report.unknown.append((change.source, change.into))
                merged[(change.source, old)] = (change.source, change.into)
            new.pop((change.source, old), None)
            if holdable_key(change.source, old):
                gone.add((change.source, old))
        else:
            _supersede(store, change, new, gone, seeds)
    area = _Neighbourhood(store, new, gone)
    area.add_persons(seeds)
    for r in new.values():
        area.add_record(r)
    area.close()
    # the blocks the changed records were in before stand beside those of every record
    # re-linked: one measure says which are over the cap, and which the changes take
    # across it (every record of such a block is re-linked too, and measured again)
    before = [demographics(r) for r in area.old]
    while True:
        demos = before + [demographics(r) for r in area.records.values()]
        blocks = _blocks(store, demos, new, gone)
        crossed = set(store.owners(blocks.crossed()).values()) - area.persons
        if not crossed:
            break
        area.add_persons(crossed)
        area.close()
    records = area.records
    by_source: dict[str, list[SourcePerson]] = defaultdict(list)
    for r in records.values():
        by_source[r.source].append(r)
    linkage = link(by_source, blocks.over())
    people, link_rows = [], []
    owners: dict[tuple[str, str], str] = {}
    for group in linkage.groups:
        person, rows = person_rows(key, group, linkage.methods, built_at, Counter())
        people.append(person)
        link_rows.extend(rows)
        owners.update(((m.source, m.local_id), person.id) for m in group.members)
    reviews = [
        ReviewRow(
            n.record.source,
            n.record.local_id,
            owners[(n.other.source, n.other.local_id)],
            n.score.total,
            n.explain(),
            orjson.dumps(vars(demographics(n.record))).decode(),
        )
        for n in linkage.near_misses
    ]
    staying = {p.id for p in people}
    successors = set()
    for k, pid in area.was.items():
        if pid in staying:
            continue
        to = owners.get(merged.get(k, k))
        if to is not None:
            successors.add((pid, to))
    store.replace_people(
        sorted(area.persons),
        people,
        link_rows,
        reviews,
        sorted(gone | set(records)),
        [fields_row(r, valid_nhs(r)) for r in records.values()],
        sorted(successors),
        built_at,
    )
    report.records = len(records)
    report.persons_before = len(area.persons)
    report.persons_after = len(people)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _named(change: Change) -> list[tuple[str, str]]:
    """The records a change names by (source, local id)."""
    if isinstance(change, Upsert):
        return [(change.record.source, change.record.local_id)]
    if isinstance(change, Remove):
        return [(change.source, change.local_id)]
    if isinstance(change, MergeRecords):
        return [(change.source, change.old), (change.source, change.into)]
    return []


def _supersede(
    store: IndexStore,
    change: NhsNumberSuperseded,
    new: dict[tuple[str, str], SourcePerson],
    gone: set[tuple[str, str]],
    seeds: set[str],
) -> None:
    """Every record holding ``change.old`` now (in the index or among the changes so far)
    holds ``change.new``."""
    held = store.person_by_nhs(change.old)
    if held is not None:
        seeds.add(held.id)
        for row in store.links_of(held.id):
            k = (row.source, row.local_id)
            if k not in new and k not in gone:
                new[k] = record_of(row)
    for k, r in list(new.items()):
        if valid_nhs(r) == change.old:
            new[k] = _renumbered(r, change.new)
    target = store.person_by_nhs(change.new)
    if target is not None:
        seeds.add(target.id)
