"""k^m-anonymity of the released facts (``release.py`` says what it guarantees).

``Plan`` holds every released person's facts, interned, each as its ladder of
generalisation levels (``release.LEVELS``); ``enforce`` chooses, per class of
people who look alike (sex, age band, area) and kind of fact, the level that
keeps the most facts, then suppresses facts person by person until every set
of at most ``m`` facts a member holds is held by at least ``k`` members, and
no diagnosis by every member.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations

from carelink.anonymise.release import LEVELS, project


@dataclass
class Plan:
    """Every person's facts (interned) at every level of generalisation; what survives."""

    facts: list[bytes] = field(default_factory=list)
    _ids: dict[bytes, int] = field(default_factory=dict)
    #: each person's facts, each as its ladder of fact ids (one per level)
    ladders: list[list[tuple[int, ...]]] = field(default_factory=list)
    #: each person's released facts (filled in by ``enforce``)
    people: list[set[int]] = field(default_factory=list)
    sensitive: set[int] = field(default_factory=set)
    #: facts kept in preference when a set of facts is too rare (a cohort's own condition)
    anchored: set[int] = field(default_factory=set)
    _codes: dict[int, frozenset[tuple[str, str]]] = field(default_factory=dict)

    def _intern(self, fact: bytes, is_sensitive: bool) -> int:
        i = self._ids.get(fact)
        if i is None:
            i = self._ids[fact] = len(self.facts)
            self.facts.append(fact)
        if is_sensitive:
            self.sensitive.add(i)
        return i

    def add_person(
        self, facts: Iterable[tuple[list[bytes], bool]], anchored: Iterable[list[bytes]] = ()
    ) -> int:
        """Record one person's facts, each as its ladder (``Draft.ladder``) with whether
        it is a diagnosis; the person's number."""
        ladders = [tuple(self._intern(f, s) for f in ladder) for ladder, s in facts]
        for ladder in anchored:
            self.anchored.update(self._intern(f, False) for f in ladder)
        self.ladders.append(ladders)
        self.people.append({ladder[0] for ladder in ladders})
        return len(self.people) - 1

    def codes(self, fact: int) -> frozenset[tuple[str, str]]:
        """The (type, ``system|code``) of each code of the fact's main element."""
        got = self._codes.get(fact)
        if got is None:
            got = self._codes[fact] = frozenset((t, c) for t, c, _ in project(self.facts[fact]))
        return got


@dataclass
class Suppression:
    """What enforcing k^m-anonymity cost."""

    facts_in: int = 0
    facts_out: int = 0
    rounds: int = 0
    #: how many (class, fact) choices settled at each level of ``LEVELS``
    levels: Counter[str] = field(default_factory=Counter)


def enforce(
    plan: Plan, classes: Iterable[list[int]], k: int, m: int, diversity: bool = True
) -> Suppression:
    """Generalise, then suppress, until in every class every set of at most ``m``
    released facts of a member is held by at least ``k`` members and (``diversity``) no
    diagnosis is held by every member. Fills ``plan.people``.

    First, for each kind of fact (its main code) within a class, one level of
    generalisation is chosen for the whole class: the one that keeps the most
    people's facts with at least ``k`` holders (the finer on a tie); facts still
    rarer than that are suppressed. Then sets of up to ``m`` facts held by fewer
    than ``k`` members lose their rarer fact for those members, and singles are
    checked again, until nothing changes. Support is counted on exact released
    content, so an intruder who knows less than a fact (no category, a month
    instead of a year) faces at least as many candidates.
    """
    if m < 1 or m > 3:
        raise ValueError("m (facts the intruder knows) must be 1, 2 or 3")
    cost = Suppression(facts_in=sum(len(p) for p in plan.people))
    for members in classes:
        _generalise_class(plan, members, k, cost)
        cost.rounds = max(cost.rounds, _suppress_class(plan, members, k, m, diversity))
    cost.facts_out = sum(len(p) for p in plan.people)
    return cost


def _generalise_class(plan: Plan, members: list[int], k: int, cost: Suppression) -> None:
    by_kind: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for p in members:
        for ladder in plan.ladders[p]:
            by_kind.setdefault(ladder[-1], []).append((p, ladder))
    chosen: dict[int, set[int]] = {p: set() for p in members}
    for occurrences in by_kind.values():
        best: tuple[int, int] | None = None  # (kept, -level)
        for level in range(len(LEVELS)):
            holders: dict[int, set[int]] = {}
            for p, ladder in occurrences:
                holders.setdefault(ladder[level], set()).add(p)
            kept = sum(len(h) for h in holders.values() if len(h) >= k)
            if best is None or kept > best[0]:
                best = (kept, level)
        assert best is not None
        level = best[1]
        cost.levels[LEVELS[level]] += 1
        holders = {}
        for p, ladder in occurrences:
            holders.setdefault(ladder[level], set()).add(p)
        for fact, who in holders.items():
            if len(who) >= k:
                for p in who:
                    chosen[p].add(fact)
    for p in members:
        plan.people[p] = chosen[p]


def _suppress_class(plan: Plan, members: list[int], k: int, m: int, diversity: bool) -> int:
    people = plan.people
    rounds = 0
    while True:
        rounds += 1
        changed = False
        support = Counter(f for p in members for f in people[p])
        drop = {f for f, c in support.items() if c < k}
        if diversity:
            drop |= _homogeneous(plan, members)
        if drop:
            for p in members:
                people[p] -= drop
            changed = True
            support = Counter(f for p in members for f in people[p])
        for size in range(2, m + 1):
            counts: Counter[tuple[int, ...]] = Counter()
            for p in members:
                counts.update(combinations(sorted(people[p]), size))
            bad = {combo for combo, c in counts.items() if c < k}
            if not bad:
                continue
            changed = True
            for p in members:
                held = people[p]
                for combo in combinations(sorted(held), size):
                    if combo in bad and all(f in held for f in combo):
                        # the rarer fact goes, for the few who hold the whole set
                        held.discard(min(combo, key=lambda f: (f in plan.anchored, support[f], f)))
            break  # recount from singles: supports have changed
        if not changed:
            return rounds


def _homogeneous(plan: Plan, members: list[int]) -> set[int]:
    """The diagnoses that would be learnt about anyone known to be in the class: every
    diagnosis fact carrying a code that every member holds through some diagnosis fact,
    however each records it (its year, category or the other codes beside it)."""
    holders: dict[tuple[str, str], set[int]] = {}
    for p in members:
        for f in plan.people[p]:
            if f in plan.sensitive:
                for code in plan.codes(f):
                    holders.setdefault(code, set()).add(p)
    common = {code for code, who in holders.items() if len(who) == len(members)}
    return {
        f
        for p in members
        for f in plan.people[p]
        if f in plan.sensitive and not plan.codes(f).isdisjoint(common)
    }


def facts_of(plan: Plan, person: int) -> Iterator[bytes]:
    """The facts of one person that survived, in a stable order."""
    for f in sorted(plan.people[person]):
        yield plan.facts[f]
