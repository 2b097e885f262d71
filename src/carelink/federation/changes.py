"""Changes at a source applied to the live index, without a rebuild.

A change names the records it touches; ``apply_changes`` re-links only the
people those records belong to, or could belong to (the person holding the
record now, the person holding its NHS number, the people alike in birth date
or postcode), with the same rules as a build (``linkage.link``), and
replaces those people in one transaction. Everyone else is left alone.

Kinds of change:

- ``Upsert``: a record is new, or its demographics changed;
- ``Remove``: a record is gone from its source;
- ``MergeRecords``: a source merged two of its records into one (HL7 v2
  ADT^A40: the ``old`` local id is gone, its person is ``into``);
- ``NhsNumberSuperseded``: PDS replaced an NHS number; every record holding
  the old number now holds the new one.

A rebuild from the same sources gives the same people, except where the
neighbourhood searched here misses a candidate the full blocking would find;
``reconcile`` (``federation.update``) reports such drift.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.federation.index import person_rows
from carelink.federation.linkage import demographics, link, valid_nhs
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.fhir.search import fold
from carelink.sources.base import SourcePerson, indexed
from carelink.storage import IndexStore, LinkRow, ReviewRow


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


def _neighbours(store: IndexStore, p: SourcePerson) -> set[str]:
    """People who could be this record's person: the holder of its NHS number, else
    (a new number, or none) people alike in birth date (either way round) or in
    postcode and surname, whom a record without a number may join."""
    nhs = valid_nhs(p)
    if nhs:
        found = store.person_by_nhs(nhs)
        if found:
            return {found.id}
    dates = set()
    if p.birth_date:
        dates.add(p.birth_date)
        if len(p.birth_date) == 10:
            dates.add(f"{p.birth_date[:4]}-{p.birth_date[8:]}-{p.birth_date[5:7]}")
    return store.alike(sorted(dates), p.postcode, fold(p.family))


def apply_changes(
    store: IndexStore,
    changes: Sequence[Change],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChangeReport:
    """Apply ``changes`` to the live index: re-link the people they touch, in one swap."""
    started = time.perf_counter()
    report = ChangeReport(changes=len(changes))
    key = store.secret()
    built_at = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    affected: set[str] = set()
    new: dict[tuple[str, str], SourcePerson] = {}
    gone: set[tuple[str, str]] = set()

    def owner(source: str, local: str) -> None:
        row = store.link(source, local)
        if row is None:
            report.unknown.append((source, local))
        else:
            affected.add(row.person_id)

    for change in changes:
        if isinstance(change, Upsert):
            r = change.record
            current = store.link(r.source, r.local_id)
            if current is not None:
                affected.add(current.person_id)
            affected |= _neighbours(store, r)
            new[(r.source, r.local_id)] = r
        elif isinstance(change, Remove):
            owner(change.source, change.local_id)
            gone.add((change.source, change.local_id))
        elif isinstance(change, MergeRecords):
            owner(change.source, change.old)
            owner(change.source, change.into)
            gone.add((change.source, change.old))
        else:
            held = store.person_by_nhs(change.old)
            if held is not None:
                affected.add(held.id)
                for row in store.links_of(held.id):
                    r = record_of(row)
                    if valid_nhs(r) == change.old:
                        new[(r.source, r.local_id)] = _renumbered(r, change.new)
            target = store.person_by_nhs(change.new)
            if target is not None:
                affected.add(target.id)
    records: dict[tuple[str, str], SourcePerson] = {}
    for pid in affected:
        for row in store.links_of(pid):
            records[(row.source, row.local_id)] = record_of(row)
    records.update(new)
    for k in gone:
        records.pop(k, None)
    by_source: dict[str, list[SourcePerson]] = defaultdict(list)
    for r in records.values():
        by_source[r.source].append(r)
    linkage = link(by_source)
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
    store.replace_people(sorted(affected), people, link_rows, reviews, sorted(gone | set(records)))
    report.records = len(records)
    report.persons_before = len(affected)
    report.persons_after = len(people)
    report.seconds = round(time.perf_counter() - started, 3)
    return report
