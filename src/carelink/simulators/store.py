"""One source's slice of the synthetic population, held by a simulator."""

from __future__ import annotations

from functools import lru_cache

from carelink.simulators.clinical import Fact, facts
from carelink.simulators.population import Person, local_id, people


class PopulationSlice:
    """The people one source knows, by its local id and by NHS number.

    Demographics are held in memory (about 1 KB a person); each person's
    facts are regenerated deterministically on demand and cached.
    """

    def __init__(self, source: str, seed: int, size: int, cache_size: int = 20_000) -> None:
        self.source = source
        self.seed = seed
        self.size = size
        self.by_local: dict[str, Person] = {}
        self.by_nhs: dict[str, str] = {}
        for person in people(seed, size):
            if source in person.sources:
                lid = local_id(source, person.index)
                self.by_local[lid] = person
                self.by_nhs[person.nhs_number] = lid
        self._ids = list(self.by_local)
        self._facts = lru_cache(maxsize=cache_size)(self._make_facts)

    def _make_facts(self, lid: str) -> tuple[Fact, ...]:
        return tuple(facts(self.seed, self.by_local[lid], self.source))

    def facts(self, lid: str) -> tuple[Fact, ...]:
        """The facts this source records about the person with local id ``lid``."""
        return self._facts(lid)

    def local_ids(self) -> list[str]:
        """All local ids, in a stable order (population order): one list, made once
        (every listing page asks for it), which callers read and never change."""
        return self._ids
