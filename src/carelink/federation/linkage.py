"""Group source records into people: NHS number first, then demographics, in any order.

How one build decides (no step depends on the order sources or records arrive in):

1. Each record's NHS number is checked (modulus 11). A bad one is reported
   (which source and local id, never the number or the person) and not used:
   the record is matched on demographics like one that has no number.
2. Records sharing a valid NHS number are one person.
3. Blocking finds candidate pairs: two records are compared when they share a
   key from ``matching.blocking_keys`` and at least one of them has no valid
   NHS number (two valid numbers have already decided). So every record meets
   every candidate person, whether that person was made by NHS number or by
   demographics alone.
4. Pairs are scored (``matching.score``) and taken best first, ties broken by
   the records' (source, local id). A pair at or above ``MATCH_THRESHOLD``
   joins the two people unless that would

   - put two different valid NHS numbers in one person: never (the number wins);
   - put two records of the same source in one person. A source holding two
     registrations of one person has a duplicate that only it can resolve, and
     two records of one source that look alike are as often twins or relatives
     sharing a home; so the pair goes to review instead.

5. Every scored pair at or above ``REVIEW_THRESHOLD`` whose records ended in
   different people goes to review with its field-by-field explanation (and
   the rule that kept it apart, if one did): once per pair of people, the
   best-scoring pair of records. The review list holds one entry per record,
   so a pair whose two records are both already listed is only counted.

Joining is single linkage (a record joins a person if it matches any of the
person's records), kept short by the same-source rule: a person holds at most
one demographically linked record per source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from carelink.federation.matching import (
    BLOCK_CAP,
    MATCH_THRESHOLD,
    REVIEW_THRESHOLD,
    Demographics,
    MatchScore,
    blocking_keys,
    score,
)
from carelink.fhir.nhs import is_valid, normalise
from carelink.sources.base import SourcePerson

SAME_SOURCE = "both records are at the same source"
OTHER_NHS_NUMBER = "the people hold different NHS numbers"


@dataclass(frozen=True)
class Group:
    """One person: their records (sorted by source, local id) and NHS number if any."""

    members: tuple[SourcePerson, ...]
    nhs_number: str | None


@dataclass(frozen=True)
class NearMiss:
    """Two records that may be one person but were not linked."""

    record: SourcePerson
    other: SourcePerson
    score: MatchScore
    reason: str | None  # the rule that kept a match apart; None when below the threshold

    def explain(self) -> str:
        """The score's field-by-field explanation, and why a match was not linked."""
        text = self.score.explain()
        return f"{text}; not linked: {self.reason}" if self.reason else text


@dataclass(frozen=True)
class Linkage:
    """The result of linking: people, how each record joined, near misses, checks."""

    groups: tuple[Group, ...]
    #: (source, local id) -> ("nhs-number" | "demographic" | "unmatched", score)
    methods: Mapping[tuple[str, str], tuple[str, float | None]]
    near_misses: tuple[NearMiss, ...]
    #: (source, local id) of records whose NHS number failed the check
    invalid_nhs_numbers: tuple[tuple[str, str], ...]
    #: how many other records each record was compared with
    candidates: Mapping[tuple[str, str], int]
    #: pairs of people that matched but were kept apart, by rule
    kept_apart_same_source: int
    kept_apart_nhs_number: int
    #: near misses left off the review list because both records already have an entry
    unlisted_near_misses: int


def demographics(p: SourcePerson) -> Demographics:
    """What matching compares for a record."""
    return Demographics(p.given, p.family, p.birth_date, p.gender, p.postcode)


class _People:
    """Union-find over record indices, each root knowing its NHS number and sources."""

    def __init__(self, records: Sequence[SourcePerson], nhs: Sequence[str | None]) -> None:
        self.parent = list(range(len(records)))
        self.nhs: list[str | None] = list(nhs)
        self.sources: list[set[str]] = [{r.source} for r in records]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def conflict(self, a: int, b: int) -> str | None:
        """Why the people of roots ``a`` and ``b`` may not be joined by demographics."""
        if self.nhs[a] and self.nhs[b] and self.nhs[a] != self.nhs[b]:
            return OTHER_NHS_NUMBER
        if self.sources[a] & self.sources[b]:
            return SAME_SOURCE
        return None

    def union(self, a: int, b: int) -> None:
        a, b = sorted((self.find(a), self.find(b)))
        if a == b:
            return
        self.parent[b] = a
        self.nhs[a] = self.nhs[a] or self.nhs[b]
        self.sources[a] |= self.sources[b]


def record_keys(p: SourcePerson) -> set[str]:
    """A record's blocking keys."""
    return set(blocking_keys(demographics(p)))


def candidate_pairs(
    records: Sequence[SourcePerson],
    nhs: Sequence[str | None],
    oversized: frozenset[str] = frozenset(),
) -> set[tuple[int, int]]:
    """Index pairs sharing a blocking key, at least one without a (valid) NHS number.

    A block of more than ``BLOCK_CAP`` records, or one named in ``oversized`` (a
    streaming build that links a part of the population passes the blocks that
    are over the cap in the whole of it), finds no candidates.
    """
    keys = [record_keys(r) for r in records]
    # only blocks holding a record without a number make pairs: the others are not kept
    wanted = {k for i, ks in enumerate(keys) if not nhs[i] for k in ks}
    blocks: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, ks in enumerate(keys):
        for key in ks & wanted:
            blocks[key][0 if nhs[i] else 1].append(i)
    pairs: set[tuple[int, int]] = set()
    for key, (with_nhs, without) in blocks.items():
        if not without or key in oversized or len(with_nhs) + len(without) > BLOCK_CAP:
            continue
        for n, i in enumerate(without):
            pairs.update((min(i, j), max(i, j)) for j in without[n + 1 :])
            pairs.update((min(i, j), max(i, j)) for j in with_nhs)
    return pairs


def valid_nhs(p: SourcePerson) -> str | None:
    """The record's NHS number when it passes the check, else None."""
    number = normalise(p.nhs_number) if p.nhs_number else None
    return number if number and is_valid(number) else None


def link(
    by_source: Mapping[str, Iterable[SourcePerson]], oversized: frozenset[str] = frozenset()
) -> Linkage:
    """Partition every record of every source into people (pure; order-independent)."""
    records = sorted(
        (p for ps in by_source.values() for p in ps), key=lambda p: (p.source, p.local_id)
    )
    nhs: list[str | None] = []
    invalid: list[tuple[str, str]] = []
    for r in records:
        number = normalise(r.nhs_number) if r.nhs_number else None
        if number and not is_valid(number):
            invalid.append((r.source, r.local_id))
            number = None
        nhs.append(number or None)
    people = _People(records, nhs)
    first_with: dict[str, int] = {}
    for i, number in enumerate(nhs):
        if number:
            people.union(first_with.setdefault(number, i), i)
    pairs = candidate_pairs(records, nhs, oversized)
    candidates = [0] * len(records)
    scored: list[tuple[float, int, int, MatchScore]] = []
    demos = [demographics(r) for r in records]
    for i, j in pairs:
        candidates[i] += 1
        candidates[j] += 1
        s = score(demos[i], demos[j])
        if s.total >= REVIEW_THRESHOLD:
            scored.append((-s.total, i, j, s))
    scored.sort(key=lambda t: t[:3])
    best_edge: dict[int, float] = {}
    blocked: dict[tuple[int, int], str] = {}
    for _, i, j, s in scored:
        if s.total < MATCH_THRESHOLD:
            break
        a, b = people.find(i), people.find(j)
        if a == b:
            continue
        why = people.conflict(a, b)
        if why:
            blocked[(i, j)] = why
            continue
        people.union(a, b)
        best_edge[i] = max(best_edge.get(i, s.total), s.total)
        best_edge[j] = max(best_edge.get(j, s.total), s.total)
    return _result(records, nhs, people, scored, blocked, best_edge, candidates, invalid)


def _result(
    records: Sequence[SourcePerson],
    nhs: Sequence[str | None],
    people: _People,
    scored: Sequence[tuple[float, int, int, MatchScore]],
    blocked: Mapping[tuple[int, int], str],
    best_edge: Mapping[int, float],
    candidates: Sequence[int],
    invalid: Sequence[tuple[str, str]],
) -> Linkage:
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        members[people.find(i)].append(i)
    methods: dict[tuple[str, str], tuple[str, float | None]] = {}
    for idx in members.values():
        for i in idx:
            key = (records[i].source, records[i].local_id)
            if nhs[i]:
                methods[key] = ("nhs-number", None)
            elif len(idx) > 1:
                methods[key] = ("demographic", best_edge[i])
            else:
                methods[key] = ("unmatched", None)
    seen: set[tuple[int, int]] = set()
    listed: set[int] = set()
    near: list[NearMiss] = []
    unlisted = 0
    for _, i, j, s in scored:
        a, b = people.find(i), people.find(j)
        if a == b or (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        # the review list holds one entry per record: the record named is the one without
        # an NHS number if only one lacks it, else the other end if that one is taken
        ends = (
            [(j, i), (i, j)]
            if people.nhs[b] is None and people.nhs[a] is not None
            else [
                (i, j),
                (j, i),
            ]
        )
        free = [(rec, other) for rec, other in ends if rec not in listed]
        if not free:
            unlisted += 1
            continue
        rec, other = free[0]
        listed.add(rec)
        near.append(NearMiss(records[rec], records[other], s, blocked.get((i, j))))
    groups = tuple(
        Group(tuple(records[i] for i in idx), people.nhs[root])
        for root, idx in sorted(members.items())
    )
    return Linkage(
        groups=groups,
        methods=methods,
        near_misses=tuple(near),
        invalid_nhs_numbers=tuple(invalid),
        candidates={(r.source, r.local_id): c for r, c in zip(records, candidates, strict=True)},
        kept_apart_same_source=sum(1 for m in near if m.reason == SAME_SOURCE),
        kept_apart_nhs_number=sum(1 for m in near if m.reason == OTHER_NHS_NUMBER),
        unlisted_near_misses=unlisted,
    )
