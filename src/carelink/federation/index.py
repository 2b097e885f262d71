"""Build the patient index: who each source's records belong to.

Records carrying a valid NHS number are linked by it. Records without one
(or with an invalid one) are matched on demographics against the people
already known (see ``matching``): linked at or above the match threshold,
put on the review list between the thresholds, and otherwise kept as a
person of their own so their data is never lost.

The gateway's person id is a keyed hash (HMAC-SHA256, key kept in the
database) of the NHS number, so ids are stable across rebuilds yet reveal
nothing about the number.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.federation.matching import (
    MATCH_THRESHOLD,
    REVIEW_THRESHOLD,
    Demographics,
    best_match,
    blocking_keys,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid, normalise
from carelink.fhir.search import fold
from carelink.sources.base import Source, SourcePerson, local_id_system
from carelink.sources.namespacing import namespaced_id
from carelink.storage import IndexStore, LinkRow, PersonRow, ReviewRow

Json = dict[str, Any]
GATEWAY_SOURCE = "urn:carelink:gateway"
#: the source whose demographics win when several hold the person (registration)
PREFERRED = ("gp", "acute", "community", "social-care")


@dataclass
class BuildReport:
    """What a build did, per source and overall."""

    records: dict[str, int] = field(default_factory=dict)
    persons: int = 0
    by_nhs_number: int = 0
    by_demographics: int = 0
    review: int = 0
    unmatched: int = 0
    invalid_nhs_numbers: int = 0


def person_id(key: bytes, nhs_number: str | None, fallback: str) -> str:
    """The gateway's id for a person: keyed hash of the NHS number (or of a source id)."""
    material = f"nhs:{nhs_number}" if nhs_number else f"local:{fallback}"
    return hmac.new(key, material.encode(), hashlib.sha256).hexdigest()[:32]


def _demo(p: SourcePerson) -> Demographics:
    return Demographics(p.given, p.family, p.birth_date, p.gender, p.postcode)


def _rank(p: SourcePerson) -> int:
    return PREFERRED.index(p.source) if p.source in PREFERRED else len(PREFERRED)


def merged_patient(
    pid: str, members: Sequence[SourcePerson], nhs: str | None, built_at: str
) -> Json:
    """The gateway's Patient: best demographics, every source id, links to source Patients."""
    best = min(members, key=_rank)
    identifiers: list[Json] = []
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    identifiers.extend({"system": local_id_system(m.source), "value": m.local_id} for m in members)
    src = best.patient
    out: Json = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"source": GATEWAY_SOURCE, "lastUpdated": built_at},
        "identifier": identifiers,
    }
    for key in ("name", "telecom", "gender", "birthDate", "address", "generalPractitioner"):
        if key in src:
            out[key] = src[key]
    out["link"] = [
        {
            "other": {"reference": f"Patient/{namespaced_id(m.source, m.local_id)}"},
            "type": "seealso",
        }
        for m in members
    ]
    return out


async def collect(sources: Sequence[Source]) -> dict[str, list[SourcePerson]]:
    """Every person from every source, sources read concurrently."""

    async def one(source: Source) -> list[SourcePerson]:
        return [p async for p in source.people()]

    results = await asyncio.gather(*(one(s) for s in sources))
    return {s.name: r for s, r in zip(sources, results, strict=True)}


def link_people(
    by_source: dict[str, list[SourcePerson]], key: bytes, built_at: str = "2026-01-01T00:00:00Z"
) -> tuple[list[PersonRow], list[LinkRow], list[ReviewRow], BuildReport]:
    """Group source records into persons (pure: no I/O; ``built_at`` stamps lastUpdated)."""
    report = BuildReport(records={s: len(v) for s, v in by_source.items()})
    groups: dict[str, list[SourcePerson]] = defaultdict(list)
    methods: dict[tuple[str, str], tuple[str, float | None]] = {}
    nhs_of: dict[str, str | None] = {}
    pending: list[SourcePerson] = []
    for source in sorted(by_source, key=lambda s: PREFERRED.index(s) if s in PREFERRED else 9):
        for p in by_source[source]:
            nhs = normalise(p.nhs_number) if p.nhs_number else None
            if nhs and not is_valid(nhs):
                report.invalid_nhs_numbers += 1
                nhs = None
            if nhs is None:
                pending.append(p)
                continue
            pid = person_id(key, nhs, "")
            groups[pid].append(p)
            nhs_of[pid] = nhs
            methods[(p.source, p.local_id)] = ("nhs-number", None)
            report.by_nhs_number += 1
    blocks: dict[str, list[str]] = defaultdict(list)
    demo_of: dict[str, Demographics] = {}
    for pid, members in groups.items():
        d = _demo(min(members, key=_rank))
        demo_of[pid] = d
        for k in blocking_keys(d):
            blocks[k].append(pid)
    reviews: list[ReviewRow] = []
    for p in pending:
        d = _demo(p)
        cands = {c for k in blocking_keys(d) for c in blocks.get(k, ())}
        cid, sc = best_match(d, ((c, demo_of[c]) for c in sorted(cands)))
        if cid is not None and sc is not None and sc.total >= MATCH_THRESHOLD:
            groups[cid].append(p)
            methods[(p.source, p.local_id)] = ("demographic", sc.total)
            report.by_demographics += 1
            continue
        pid = person_id(key, None, f"{p.source}:{p.local_id}")
        groups[pid].append(p)
        nhs_of[pid] = None
        methods[(p.source, p.local_id)] = ("unmatched", sc.total if sc else None)
        report.unmatched += 1
        if sc is not None and sc.total >= REVIEW_THRESHOLD:
            reviews.append(
                ReviewRow(
                    p.source,
                    p.local_id,
                    cid,
                    sc.total,
                    sc.explain(),
                    orjson.dumps(vars(d)).decode(),
                )
            )
            report.review += 1
    persons: list[PersonRow] = []
    link_rows: list[LinkRow] = []
    for pid, members in groups.items():
        nhs = nhs_of.get(pid)
        patient = merged_patient(pid, members, nhs, built_at)
        body = orjson.dumps(patient)
        best = min(members, key=_rank)
        persons.append(
            PersonRow(
                id=pid,
                nhs_number=nhs,
                family=best.family,
                given=best.given,
                family_folded=fold(best.family),
                given_folded=fold(best.given),
                birth_date=best.birth_date,
                gender=best.gender,
                postcode=best.postcode,
                patient=body,
                version=hashlib.blake2b(body, digest_size=12).hexdigest(),
            )
        )
        for m in members:
            method, sc_ = methods[(m.source, m.local_id)]
            sp = dict(m.patient)
            sp["link"] = [{"other": {"reference": f"Patient/{pid}"}, "type": "seealso"}]
            link_rows.append(
                LinkRow(
                    m.source,
                    m.local_id,
                    pid,
                    namespaced_id(m.source, m.local_id),
                    method,
                    sc_,
                    orjson.dumps(sp),
                )
            )
    report.persons = len(persons)
    return persons, link_rows, reviews, report


async def build_index(
    sources: Sequence[Source],
    store: IndexStore,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BuildReport:
    """Read every source, link, and swap the stored index in one transaction."""
    by_source = await collect(sources)
    built_at = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    persons, link_rows, reviews, report = link_people(by_source, store.secret(), built_at)
    store.replace_all(persons, link_rows, reviews)
    return report
