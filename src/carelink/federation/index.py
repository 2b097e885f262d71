"""Build the patient index: who each source's records belong to.

``linkage`` decides who is who (NHS number first, then demographics for
everyone, order-independent; near misses to review); ``patient_merge`` makes
each person's merged Patient. This module turns both into index rows and
stores them.

The gateway's person id is a keyed hash (HMAC-SHA256, key kept in the
database) of the NHS number, so ids are stable across rebuilds yet reveal
nothing about the number. A person without one gets the hash of their
preferred record's source and local id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from carelink.consent.policy import unmarked
from carelink.federation.linkage import Group, demographics, link
from carelink.federation.matching import lookup_values
from carelink.federation.patient_merge import merge_patient, rank
from carelink.federation.ukcore import with_nhs_number_status
from carelink.fhir.search import fold
from carelink.sources.base import Source, SourcePerson
from carelink.sources.namespacing import namespaced_id
from carelink.storage import FieldsRow, LinkRow, PersonRow, ReviewRow

Json = dict[str, Any]


@dataclass
class BuildReport:
    """What a build did, per source and overall (counts and record keys, no patient data)."""

    records: dict[str, int] = field(default_factory=dict)
    persons: int = 0
    by_nhs_number: int = 0
    by_demographics: int = 0
    review: int = 0
    unmatched: int = 0
    invalid_nhs_numbers: int = 0
    #: (source, local id) of each record whose NHS number failed the check (not used)
    invalid_nhs_records: list[tuple[str, str]] = field(default_factory=list)
    #: matching pairs kept apart because both records are at one source (sent to review)
    kept_apart_same_source: int = 0
    #: matching pairs kept apart because the people hold different NHS numbers
    kept_apart_nhs_number: int = 0
    #: near misses not listed because both their records already have a review entry
    unlisted_near_misses: int = 0
    #: merged Patients whose sources disagree, per element
    conflicts: dict[str, int] = field(default_factory=dict)
    #: candidates each record without a valid NHS number was compared with (mean, max)
    candidates_mean: float = 0.0
    candidates_max: int = 0
    #: demographics left out of linkage and search because the index cannot hold them
    #: (``SourcePerson.__post_init__``): how many records, per field
    left_out: dict[str, int] = field(default_factory=dict)
    #: records not indexed because their key is longer than the index holds
    #: (``SourcePerson.keyable``), per source
    unkeyable: dict[str, int] = field(default_factory=dict)
    #: blocks over ``matching.BLOCK_CAP`` records, not used to find candidates
    oversized_blocks: int = 0
    #: the largest peak memory of a writer process, in MB (None: the people were made in
    #: the building process itself)
    writer_peak_mb: int | None = None
    #: (retired id, successor) pairs a rebuild recorded for the ids it retired
    successors: int = 0
    #: rows of the index the build replaced, deleted after its swap (SQLite sets the old
    #: tables aside at the swap and empties them a little at a time: ``clear_gone``)
    cleared: int = 0
    #: wall-clock seconds per stage of a streaming build (reading, linking, writing, swap,
    #: clearing)
    seconds: dict[str, float] = field(default_factory=dict)


def person_id(key: bytes, nhs_number: str | None, fallback: str) -> str:
    """The gateway's id for a person: keyed hash of the NHS number (or of a source id)."""
    material = f"nhs:{nhs_number}" if nhs_number else f"local:{fallback}"
    return hmac.new(key, material.encode(), hashlib.sha256).hexdigest()[:32]


def group_id(key: bytes, group: Group) -> str:
    """A person's id: from the NHS number, else from the preferred record."""
    best = min(group.members, key=rank)
    return person_id(key, group.nhs_number, f"{best.source}:{best.local_id}")


async def collect(sources: Sequence[Source]) -> dict[str, list[SourcePerson]]:
    """Every person from every source, sources read concurrently."""

    async def one(source: Source) -> list[SourcePerson]:
        return [p async for p in source.people()]

    results = await asyncio.gather(*(one(s) for s in sources))
    return {s.name: r for s, r in zip(sources, results, strict=True)}


def is_plain(pid: str, patient: Json) -> bool:
    """``PersonRow.plain`` of the person ``pid`` whose merged Patient is ``patient``: it
    is the Patient of that id and carries nothing a consent policy finds a sensitive
    category by (consent's own test, ``consent.policy.unmarked``)."""
    return (
        patient.get("resourceType") == "Patient" and patient.get("id") == pid and unmarked(patient)
    )


def person_rows(
    key: bytes,
    group: Group,
    methods: Mapping[tuple[str, str], tuple[str, float | None]],
    built_at: str,
    conflicts: Counter[str],
) -> tuple[PersonRow, list[LinkRow]]:
    """One person's index row and their links (``conflicts`` counts disagreements)."""
    pid = group_id(key, group)
    merged = merge_patient(pid, group.members, group.nhs_number, built_at)
    conflicts.update(c.element for c in merged.conflicts)
    # UK Core shape: the NHS number's verification status and the Patient profile
    patient = with_nhs_number_status(merged.patient, [m.patient for m in group.members])
    body = orjson.dumps(patient)
    best = min(group.members, key=rank)
    person = PersonRow(
        id=pid,
        nhs_number=group.nhs_number,
        family=best.family,
        given=best.given,
        family_folded=fold(best.family),
        given_folded=fold(best.given),
        birth_date=best.birth_date,
        gender=best.gender,
        postcode=best.postcode,
        patient=body,
        version=hashlib.blake2b(body, digest_size=12).hexdigest(),
        plain=is_plain(pid, patient),
    )
    rows = []
    for m in group.members:
        method, score = methods[(m.source, m.local_id)]
        sp = dict(m.patient)
        sp["link"] = [{"other": {"reference": f"Patient/{pid}"}, "type": "seealso"}]
        rows.append(
            LinkRow(
                m.source,
                m.local_id,
                pid,
                namespaced_id(m.source, m.local_id),
                method,
                score,
                orjson.dumps(sp),
            )
        )
    return person, rows


def fields_row(p: SourcePerson, nhs: str | None) -> FieldsRow:
    """A record's linking fields as the index keeps them (``nhs``: its valid NHS number)."""
    day, names_ym, pc = lookup_values(demographics(p))
    return FieldsRow(
        p.source,
        p.local_id,
        nhs,
        p.given,
        p.family,
        p.birth_date,
        p.gender,
        p.postcode,
        day,
        names_ym,
        pc,
    )


def link_people(
    by_source: dict[str, list[SourcePerson]], key: bytes, built_at: str = "2026-01-01T00:00:00Z"
) -> tuple[list[PersonRow], list[LinkRow], list[ReviewRow], BuildReport]:
    """Group source records into persons (pure: no I/O; ``built_at`` stamps lastUpdated)."""
    linkage = link(by_source)
    methods = Counter(method for method, _ in linkage.methods.values())
    report = BuildReport(
        records={s: len(v) for s, v in by_source.items()},
        by_nhs_number=methods["nhs-number"],
        by_demographics=methods["demographic"],
        unmatched=methods["unmatched"],
        invalid_nhs_numbers=len(linkage.invalid_nhs_numbers),
        invalid_nhs_records=list(linkage.invalid_nhs_numbers),
        kept_apart_same_source=linkage.kept_apart_same_source,
        kept_apart_nhs_number=linkage.kept_apart_nhs_number,
        unlisted_near_misses=linkage.unlisted_near_misses,
    )
    owner: dict[tuple[str, str], str] = {}
    persons: list[PersonRow] = []
    link_rows: list[LinkRow] = []
    conflicts: Counter[str] = Counter()
    counts = [c for k, c in linkage.candidates.items() if linkage.methods[k][0] != "nhs-number"]
    report.candidates_mean = round(sum(counts) / len(counts), 2) if counts else 0.0
    report.candidates_max = max(counts, default=0)
    for group in linkage.groups:
        person, person_links = person_rows(key, group, linkage.methods, built_at, conflicts)
        persons.append(person)
        link_rows.extend(person_links)
        owner.update(((m.source, m.local_id), person.id) for m in group.members)
    reviews = [
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
    report.persons = len(persons)
    report.review = len(reviews)
    report.conflicts = dict(sorted(conflicts.items()))
    return persons, link_rows, reviews, report
