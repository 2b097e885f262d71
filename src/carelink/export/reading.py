"""Reading the extract's people: the light row kept of each (``Member``), their
federated records read ahead and retried (``Reader``), and consent for secondary use
(``SecondaryUse``) applied to what is read; condition cohorts found in a first pass."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from carelink.consent import Actor, Guard
from carelink.errors import ExportError
from carelink.export.spec import (
    ATTEMPTS,
    ODS_SYSTEM,
    ExtractSpec,
    Progress,
    permitted,
)
from carelink.federation import SharedRecord
from carelink.federation.fanout import NOT_KNOWN, OK
from carelink.federation.query import criteria
from carelink.federation.record import Federated
from carelink.storage import IndexStore, PersonRow

Json = dict[str, Any]


def age_on(birth: str | None, on: date) -> int | None:
    if not birth or len(birth) < 10:
        return None
    b = date.fromisoformat(birth[:10])
    return on.year - b.year - ((on.month, on.day) < (b.month, b.day))


@dataclass(frozen=True, slots=True)
class Member:
    """What an extract keeps of each person while it runs (a few hundred bytes: the
    merged Patient is read again with the person's record, when it is needed)."""

    id: str
    nhs_number: str | None
    birth_date: str | None
    gender: str | None
    postcode: str | None
    practice: str | None

    @classmethod
    def of(cls, row: PersonRow, with_practice: bool = True) -> Member:
        """The light row; the practice (which means parsing the Patient) only if asked."""
        practice = practice_of(orjson.loads(row.patient)) if with_practice else None
        return cls(row.id, row.nhs_number, row.birth_date, row.gender, row.postcode, practice)


def practice_of(patient: Json) -> str | None:
    for gp in patient.get("generalPractitioner", ()):
        ident = gp.get("identifier", {})
        if ident.get("system") == ODS_SYSTEM:
            return str(ident.get("value"))
    return None


def _since_ok(r: Json, since: datetime | None) -> bool:
    if since is None:
        return True
    updated = r.get("meta", {}).get("lastUpdated")
    if not updated:
        return True  # undated resources are included (the Bulk Data spec allows it)
    t = datetime.fromisoformat(str(updated).replace("Z", "+00:00"))
    return t >= since


def is_wanted(r: Json, spec: ExtractSpec) -> bool:
    rtype = str(r.get("resourceType"))
    if spec.types is not None and rtype not in spec.types:
        return False
    if not _since_ok(r, spec.since):
        return False
    filters = spec.type_filters.get(rtype)
    if filters:
        return any(all(c.matches(r) for c in criteria(rtype, f)[0]) for f in filters)
    return True


RETRY_SECONDS = 0.2


IN_FLIGHT = 8  # people whose records are being read ahead of the one being written


class Reader:
    """Federated reads for an extract, retried when a source fails, counted when it
    still fails. A source that failed someone's every attempt is not retried for the
    next people until it answers again (a source that is down costs one read each)."""

    def __init__(self, record: SharedRecord) -> None:
        self.record = record
        self.incomplete: dict[str, int] = {}
        self._down: set[str] = set()

    async def read(self, person: Member, types: frozenset[str] | None) -> Federated:
        fed, failed = await self._attempt(person, types)
        for attempt in range(2, ATTEMPTS + 1):
            if not failed or failed <= self._down:
                break
            await asyncio.sleep(RETRY_SECONDS * (attempt - 1))
            again, still = await self._attempt(person, types)
            if len(still) < len(failed):
                fed, failed = again, still  # the most complete of the attempts is kept
        for source in failed:
            self.incomplete[source] = self.incomplete.get(source, 0) + 1
        self._down |= failed
        return fed

    async def _attempt(
        self, person: Member, types: frozenset[str] | None
    ) -> tuple[Federated, set[str]]:
        fed = await self.record.federate(person.id, types)
        self._down -= {r.source for r in fed.results if r.status == OK}
        return fed, {r.source for r in fed.results if r.status not in (OK, NOT_KNOWN)}

    async def ahead(
        self, people: list[Member], types: frozenset[str] | None
    ) -> AsyncGenerator[tuple[int, Member, Federated], None]:
        """Each person (numbered from 0) with their record, in order, reading up to
        ``IN_FLIGHT`` ahead (the sources' latency overlaps; memory holds at most that
        many records)."""
        pending: deque[tuple[Member, asyncio.Task[Federated]]] = deque()
        queue = iter(people)

        def top_up() -> None:
            while len(pending) < IN_FLIGHT:
                person = next(queue, None)
                if person is None:
                    return
                pending.append((person, asyncio.create_task(self.read(person, types))))

        top_up()
        try:
            done = 0
            while pending:
                person, task = pending.popleft()
                fed = await task
                top_up()
                yield done, person, fed
                done += 1
        finally:
            for _, task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*(t for _, t in pending), return_exceptions=True)


def one_patient(r: Json, person: Member) -> bool:
    """One Patient per person: the index's merged Patient, not each source's copy (copies
    would repeat the person in the Patient table, and in anonymised extracts would make
    one person look like a whole equivalence class)."""
    return r.get("resourceType") != "Patient" or r.get("id") == person.id


def has_condition(resources: Iterable[Json], code: str) -> bool:
    return any(
        r.get("resourceType") == "Condition"
        and any(c.get("code") == code for c in (r.get("code") or {}).get("coding", ()))
        for r in resources
    )


async def everyone_in(index: IndexStore) -> AsyncIterator[PersonRow]:
    """Every person in the index, in id order, each batch read off the event loop."""
    after = ""
    while rows := await index.db.run(index.people_after, after):
        for row in rows:
            yield row
        after = rows[-1].id


class SecondaryUse:
    """Consent for one extract: excluded categories, and Consents where the policy says;
    what was withheld, counted by ground."""

    def __init__(self, guard: Guard, spec: ExtractSpec) -> None:
        permitted(guard.engine.policy, spec)
        policy = guard.engine.policy.source
        self.guard = guard
        self.objections = policy.secondaryUseObjections == "all" or (
            policy.secondaryUseObjections == spec.profile
        )
        self.actor = Actor(f"project:{spec.project}", None, None, spec.purpose)
        self.withheld: dict[str, int] = {"sensitive": 0, "objection": 0}

    def filter(self, fed: Federated, resources: list[Json], count: bool = True) -> list[Json]:
        """The resources of one person's record consent lets into the extract."""
        kept, refused = self.guard.for_extract(
            self.actor, fed.person.id, fed.resources[0], resources, self.objections
        )
        if count:
            for d in refused:
                self.withheld[d.basis] = self.withheld.get(d.basis, 0) + 1
        return kept


#: each person with the resources of their record an extract may hold (``consented``)
Consented = AsyncGenerator[tuple["Member", list[Json]], None]


async def consented(
    reader: Reader,
    people: list[Member],
    spec: ExtractSpec,
    consent: SecondaryUse,
    progress: Progress | None,
    *,
    patients: bool = False,
) -> Consented:
    """Each person, in order, with the resources of their record the extract wants and
    consent lets into it: their merged Patient alone of the Patients (``one_patient``),
    always when ``patients``; ``ExportError`` when ``progress`` says stop."""
    total = len(people)
    async with aclosing(reader.ahead(people, None)) as records:
        async for i, person, fed in records:
            if progress is not None and not await progress(i, total):
                raise ExportError("cancelled")
            wanted = [
                r
                for r in fed.resources
                if one_patient(r, person)
                and ((patients and r.get("resourceType") == "Patient") or is_wanted(r, spec))
            ]
            yield person, consent.filter(fed, wanted)


async def with_condition(
    reader: Reader,
    people: list[Member],
    code: str,
    progress: Progress | None,
    consent: SecondaryUse,
) -> list[Member]:
    """The people whose federated record holds the condition, counting only Condition
    resources consent lets into the extract (a first pass; nothing kept)."""
    members = []
    total = len(people)
    async with aclosing(reader.ahead(people, frozenset({"Condition"}))) as records:
        async for i, person, fed in records:
            if progress is not None and not await progress(i, total):
                raise ExportError("cancelled")
            # The cheap test first; consent only for those who could be members.
            if has_condition(fed.resources, code) and has_condition(
                consent.filter(fed, fed.resources, count=False), code
            ):
                members.append(person)
    return members
