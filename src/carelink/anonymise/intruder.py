"""The motivated intruder, run against a release: how many released people it singles out.

The intruder knows, of a person it is looking for, their sex, exact age and
full postcode (generalised here exactly as the release generalised them)
and ``m`` facts from their *true* record (before anything was suppressed):
a type, a code and the year. It looks through the release for people whose
Patient agrees and who hold all ``m`` facts; if exactly one does and it is the
person, the person is re-identified. Two intruders are run for each person:
one who knows the person's ``m`` rarest facts (the strongest choice) and one
who knows ``m`` facts drawn at random.

The rate reported is re-identified people / released people, for the
stronger of the two intruders.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

Fact = tuple[str, str, str]  # (resource type, system|code, year or "")


@dataclass(frozen=True)
class Known:
    """What the intruder knows of one person, and where the person really is."""

    qi: tuple[Hashable, ...]  #: generalised as the release generalised them
    facts: tuple[Fact, ...]  #: the person's true facts
    released_as: int | None  #: the person's index in the release (None: not released)


@dataclass(frozen=True)
class Outcome:
    """The attack's result."""

    m: int
    released: int
    rarest: int  #: people singled out by the rarest-facts intruder
    random: int  #: by the random-facts intruder
    attacked: int  #: released people with at least one fact to attack with

    @property
    def rate(self) -> float:
        """The share of released people singled out (the stronger intruder)."""
        return max(self.rarest, self.random) / self.released if self.released else 0.0

    def as_json(self) -> dict[str, Any]:
        """For the risk report (counts of released people are exact: they are in the
        files; counts of re-identified people are the finding, stated exactly too)."""
        return {
            "knows": f"sex, age band, postcode area and {self.m} facts (code and year)",
            "m": self.m,
            "releasedPeople": self.released,
            "reidentifiedByRarestFacts": self.rarest,
            "reidentifiedByRandomFacts": self.random,
            "rate": round(self.rate, 4),
        }


def attack(
    known: Sequence[Known],
    released_qi: Sequence[tuple[Hashable, ...]],
    released_facts: Sequence[set[Fact]],
    m: int,
    seed: int = 0,
) -> Outcome:
    """Run both intruders against every released person."""
    rng = random.Random(seed)
    by_class: dict[tuple[Hashable, ...], set[int]] = {}
    for i, qi in enumerate(released_qi):
        by_class.setdefault(qi, set()).add(i)
    by_fact: dict[Fact, set[int]] = {}
    for i, held in enumerate(released_facts):
        for f in held:
            by_fact.setdefault(f, set()).add(i)
    frequency = Counter(f for k in known for f in set(k.facts))
    rarest = chance = attacked = 0
    for person in known:
        if person.released_as is None:
            continue
        facts = sorted(set(person.facts))
        if not facts:
            continue
        attacked += 1
        chosen_rare = sorted(facts, key=lambda f: (frequency[f], f))[:m]
        chosen_random = rng.sample(facts, min(m, len(facts)))
        for chosen, hit in ((chosen_rare, "rare"), (chosen_random, "random")):
            candidates = set(by_class.get(person.qi, set()))
            for f in chosen:
                # a fact released without its year is compatible with any year
                candidates &= by_fact.get(f, set()) | by_fact.get((f[0], f[1], ""), set())
                if not candidates:
                    break
            if candidates == {person.released_as}:
                if hit == "rare":
                    rarest += 1
                else:
                    chance += 1
    return Outcome(m, len(released_qi), rarest, chance, attacked)
