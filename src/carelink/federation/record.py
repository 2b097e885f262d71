"""``SharedRecord``: the hot path from a person to their federated record.

Plain values in, plain values out; the API turns them into HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import orjson

from carelink.errors import NotFound
from carelink.federation.fanout import OK, FanOut, Request, SourceResult
from carelink.federation.memo import Made, ParsedPatients, RecordMemo, Views, answers_of
from carelink.federation.merge import NO_AS_OF, merge, provenance
from carelink.federation.references import folded_copies, resolve, unsettled
from carelink.federation.ukcore import UkCore
from carelink.fhir.jsonio import Encodings
from carelink.fhir.outcome import issue, operation_outcome
from carelink.fhir.shared_types import SHARED_TYPES
from carelink.observability.context import instant
from carelink.storage import FoundPerson, IndexStore, LinkRow, LocationStore, PersonRow

Json = dict[str, Any]
STATUS_SYSTEM = "https://carelink.example/CodeSystem/source-status"
EXT_LATENCY = "https://carelink.example/StructureDefinition/source-latency-ms"
EXT_AS_OF = "https://carelink.example/StructureDefinition/source-data-as-of"
EXT_SOURCE = "https://carelink.example/StructureDefinition/source-name"
EXT_SKIPPED = "https://carelink.example/StructureDefinition/source-skipped-count"
PROBLEM_SYSTEM = "https://carelink.example/CodeSystem/source-problem"
#: a source's own remarks on its answer (items withheld, parameters not recognised)
NOTES_SYSTEM = "https://carelink.example/CodeSystem/source-notes"
#: reasons quoted in a source's ``skipped`` issue; the count always says how many in all
SKIPPED_SHOWN = 10
_SEVERITY = {"ok": "information", "not-known": "information"}
_CODE = {
    "ok": "informational",
    "not-known": "informational",
    "timeout": "timeout",
    "circuit-open": "transient",
    "error": "transient",
    "refused": "forbidden",
    "not-asked": "not-supported",
}


@dataclass(frozen=True)
class Federated:
    """A person's record as the sources gave it just now."""

    person: PersonRow
    #: (source, local id) of each of the person's records asked (``IndexStore.records_of``)
    links: tuple[tuple[str, str], ...]
    resources: list[Json]  # merged Patient first, then source resources
    provenance: list[Json]
    outcome: Json  # OperationOutcome: one issue per source
    results: tuple[SourceResult, ...]
    etag: str
    #: the JSON of ``resources``, each made once while the record is reused
    encodings: Encodings = field(default_factory=Encodings)
    #: ``Type/id`` of each of ``resources`` (made once while the record is reused)
    refs: frozenset[str] | None = None
    #: by position in ``provenance``: the references its targets name (empty: it names
    #: only the Patient, as a Provenance of an answer that gave nothing does)
    targets: Sequence[Sequence[str]] | None = None
    #: what callers derive from the record, kept while it is reused (``memo.Views``)
    views: Views | None = None


def source_outcome(results: Sequence[SourceResult]) -> Json:
    """One issue per configured source: what happened, how long it took, data as of when.

    The status issue's ``details`` is coded in ``STATUS_SYSTEM``. A source
    that answered but had resources left out (unreadable: no id, say) stays
    ``ok``, counts them in its status issue and is followed by one
    ``warning`` issue coded ``skipped`` in ``PROBLEM_SYSTEM`` naming them.

    Every part but the latency is the same while a source answers the same way: those
    parts are made once (``_parts``) and shared by the outcomes that hold them, which
    are only ever read (serialised, or copied before a change, as ``ukcore.claim`` does).
    """
    issues: list[Json] = []
    for r in results:
        severity, code, text, after, details, named, rest, following = _parts(
            r.source, r.status, r.as_of, r.reason, r.skipped, r.notes
        )
        latency = {"url": EXT_LATENCY, "valueDecimal": round(r.latency_ms, 1)}
        issues.append(
            {
                "severity": severity,
                "code": code,
                "diagnostics": text if after is None else f"{text}{r.latency_ms:.0f}{after}",
                "details": details,
                "extension": [named, latency, *rest],
            }
        )
        issues.extend(following)
    return operation_outcome(issues, id_="sources")


@lru_cache(maxsize=4096)
def _parts(
    source: str,
    status: str,
    as_of: str | None,
    reason: str | None,
    skipped: tuple[str, ...],
    notes: tuple[str, ...],
) -> tuple[str, str, str, str | None, Json, Json, tuple[Json, ...], tuple[Json, ...]]:
    """A source's status issue but its latency: severity, code, the text before the
    latency and after it (None: the text names no latency), details, the source's
    extension and those after the latency's; then the issues that follow it."""
    rest: list[Json] = []
    if as_of:
        rest.append({"url": EXT_AS_OF, "valueInstant": as_of})
    if skipped:
        rest.append({"url": EXT_SKIPPED, "valueInteger": len(skipped)})
    text = f"source {source}: {status}"
    after = None
    if status == OK:
        text += " in "
        after = f" ms, data as of {as_of}"
        if skipped:
            after += f"; {len(skipped)} unreadable resources left out"
    elif reason:
        text += f" ({reason})"
    following: list[Json] = []
    if skipped:
        following.append(_skipped_issue(source, skipped))
    if notes:
        following.append(
            issue(
                "information",
                "informational",
                f"source {source} says: " + "; ".join(notes),
                details={
                    "coding": [{"system": NOTES_SYSTEM, "code": "notes"}],
                    "text": "notes",
                },
                extension=[{"url": EXT_SOURCE, "valueString": source}],
            )
        )
    return (
        _SEVERITY.get(status, "warning"),
        _CODE.get(status, "transient"),
        text,
        after,
        {"coding": [{"system": STATUS_SYSTEM, "code": status}], "text": status},
        {"url": EXT_SOURCE, "valueString": source},
        tuple(rest),
        tuple(following),
    )


def _skipped_issue(source: str, skipped: tuple[str, ...]) -> Json:
    shown = "; ".join(skipped[:SKIPPED_SHOWN])
    more = len(skipped) - SKIPPED_SHOWN
    return issue(
        "warning",
        "processing",
        f"source {source} left out {len(skipped)} unreadable resources: {shown}"
        + (f"; and {more} more" if more > 0 else ""),
        details={"coding": [{"system": PROBLEM_SYSTEM, "code": "skipped"}], "text": "skipped"},
        extension=[
            {"url": EXT_SOURCE, "valueString": source},
            {"url": EXT_SKIPPED, "valueInteger": len(skipped)},
        ],
    )


def utc_now() -> str:
    """The current time as a FHIR instant (``observability.instant``)."""
    return instant()


class SharedRecord:
    """Index lookups and federated reads.

    With ``locations``, every federated record notes where each of its
    resources lives (type and id -> person), so a resource can later be read
    by its id alone (``carelink.federation.read``). Without ``fetch_targets``
    (bulk extracts, whose files hold only the types asked for) a typed read
    never asks the sources a second time just to resolve references. With ``memo``, a
    record put together from the very same answers is reused (``federation.memo``); with
    ``patients``, the index's Patients a search shows are parsed once per content
    (``index_patient``).
    """

    def __init__(
        self,
        index: IndexStore,
        fanout: FanOut,
        ukcore: UkCore | None = None,
        locations: LocationStore | None = None,
        now: Callable[[], str] = utc_now,
        fetch_targets: bool = True,
        memo: RecordMemo | None = None,
        patients: ParsedPatients | None = None,
    ) -> None:
        self.index = index
        self.fanout = fanout
        self.ukcore = ukcore  # the UK Core shape of the output (None: as the sources gave it)
        self.locations = locations
        self.now = now
        self.fetch_targets = fetch_targets
        self.memo = memo
        self.patients = patients

    @property
    def shares_patients(self) -> bool:
        """Does ``index_patient`` give the same object for the same bytes (a memo)?"""
        return self.patients is not None

    def index_patient(self, person: PersonRow | FoundPerson) -> Json:
        """The person's merged Patient as the index holds it, parsed; with ``patients``,
        the object shared by every request while those bytes are the person's (read
        only)."""
        if self.patients is None:
            parsed: Json = orjson.loads(person.patient)
            return parsed
        return self.patients.parse(person.id, person.patient)

    def _ods(self, source: str, patient: Json) -> str | None:
        return self.ukcore.organisation(source, patient) if self.ukcore is not None else None

    def by_nhs_number(self, nhs_number: str) -> PersonRow | None:
        """The person with this NHS number (index only, no fan-out)."""
        return self.index.person_by_nhs(nhs_number)

    def person(self, person_id: str) -> PersonRow | None:
        """The person with this gateway id."""
        return self.index.person(person_id)

    def source_patient(self, patient_id: str) -> LinkRow | None:
        """A source's own Patient (``<source>-<local id>``) as the index holds it."""
        return self.index.link_by_patient_id(patient_id)

    async def federate(
        self,
        person_id: str,
        types: frozenset[str] | None = None,
        deadline: float | None = None,
        person: PersonRow | None = None,
        links: Sequence[tuple[str, str]] | None = None,
    ) -> Federated:
        """Ask every source that knows the person, merge, resolve references between the
        sources' resources (see ``federation.references``), and report per source.

        With ``types``, the shared resources (Practitioner, Organization ...) are asked
        for too, so references to them resolve, and then left out unless asked for. A
        reference to a type not asked for (a Condition's Encounter) is settled by what the
        gateway has seen of the person before (``resource_locations``), or else by a
        second round asking for the types still unsettled, as targets only. ``person``
        (and ``links``, the person's ``IndexStore.records_of``): read by the caller just
        now, with its consent, so not again.
        """
        if person is None or person.id != person_id:  # read here unless the caller just did
            found = await self.index.db.looked_up(self.index.person_and_records, person_id)
            if found is None:
                raise NotFound(f"Patient/{person_id} is not known")
            person, links = found
        elif links is None:
            links = await self.index.db.looked_up(self.index.records_of, person_id)
        requests = [Request(source, local_id, person.nhs_number) for source, local_id in links]
        asked = types | SHARED_TYPES if types else None
        results = await self.fanout.gather(requests, f"Patient/{person_id}", asked, deadline)
        made = None
        if asked is None and self.memo is not None:  # no second round: every input known
            made = self.memo.get(person_id, person.patient, None, frozenset(), answers_of(results))
        extra: list[SourceResult] = []
        if made is None:
            made, extra = await self._make(person, requests, results, types or None, deadline)
        resources = made.resources
        # the Provenance and the ETag, made again only when what they are made from
        # moved (an answer's version or as-of, a source's status, the index's person)
        stamp = (
            self,
            person_id,
            person.version,
            tuple([(r.source, r.status, r.version, r.as_of) for r in results]),
            tuple([(r.source, r.status, r.version) for r in extra]),
        )
        stamped = made.stamped(stamp)
        if stamped is None:
            patient = made.index_patient  # the index's, as the sources' ODS codes read it
            # each answer's Provenance targets what that answer contributed (``made`` was
            # made from these very answers, in this order: ``memo.same_answers``)
            answered = [r for r in results if r.status == OK]
            provs = [
                self._provenance(made, n, person_id, r, kept, self._ods(r.source, patient))
                for n, (r, kept) in enumerate(zip(answered, made.contributed, strict=True))
            ]
            tag = hashlib.blake2b(person.version.encode(), digest_size=16)
            for r in [*results, *extra]:
                tag.update(f"|{r.source}:{r.status}:{r.version}".encode())
            etag = tag.hexdigest()
            made.note_stamped(stamp, provs, etag)
        else:
            provs, etag = stamped
        outcome = source_outcome(results)
        if self.ukcore is not None:
            outcome = self.ukcore.claim(outcome)
        if self.locations is not None:
            # the record's (made once while it is reused), unless this store has written
            # them all and remembers so still
            generation = self.locations.generation
            located = made.located
            if made.located_written(self.locations, generation):
                located = ()
            pairs = [*located, *((p["resourceType"], str(p["id"])) for p in provs)]
            if self.locations.unwritten(pairs):
                # a write: off the loop on SQLite too, where it may wait for the audit's commits
                await self.index.db.run(self.locations.record, person_id, pairs, self.now())
            if located:
                made.note_written(self.locations, generation)
        return Federated(
            person,
            tuple(links),
            resources,
            provs,
            outcome,
            tuple(results),
            etag,
            made.encodings,
            made.refs,
            made.contributed,  # each Provenance's targets (``merge.provenance``)
            made.views,
        )

    def _provenance(
        self, made: Made, n: int, person_id: str, r: SourceResult, kept: list[str], ods: str | None
    ) -> Json:
        """Answer ``n``'s Provenance (in UK Core shape), made once while the answer's
        version and author are the same (the record is made from the same answers: its
        contribution is the same too), recorded at the answer's as-of."""

        def make(recorded: str) -> Json:
            made = provenance(person_id, replace(r, as_of=recorded), kept, ods)
            return self.ukcore.claim(made) if self.ukcore is not None else made

        inputs = (person_id, r.source, r.version, ods)
        return made.provenance(n, inputs, r.as_of or NO_AS_OF, make)

    async def _make(
        self,
        person: PersonRow,
        requests: list[Request],
        results: list[SourceResult],
        types: frozenset[str] | None,
        deadline: float | None,
    ) -> tuple[Made, list[SourceResult]]:
        """The record from the sources' answers (and a second round for reference targets
        when only some types were asked for), or the memo's when made from the same."""
        person_id = person.id
        asked = types | SHARED_TYPES if types else None
        merged, contributed = merge(results)
        folded = folded_copies(results, contributed)
        context: list[Json] = []
        extra: list[SourceResult] = []
        known: frozenset[str] = frozenset()
        patient = orjson.loads(person.patient)
        sources = list(self.fanout.sources)
        if asked is not None:
            # references to types not asked for: settled by what the gateway has seen of
            # the person before, or else by asking the sources for those types too
            loose = unsettled([patient, *merged], folded, sources)
            if loose and self.locations is not None:
                known = await self.index.db.looked_up(self.locations.refs_of, person_id)
                loose = unsettled([patient, *merged], folded, sources, known)
            wanted = {ref.split("/", 1)[0] for ref in loose} - asked - {"Patient"}
            if wanted and self.fetch_targets:
                extra = await self.fanout.gather(
                    requests, f"Patient/{person_id}", frozenset(wanted), deadline
                )
                context, extra_contributed = merge(extra)
                folded.update(folded_copies(extra, extra_contributed))
        answers = answers_of(results) + answers_of(extra)
        if types is not None and self.memo is not None:
            made = self.memo.get(person_id, person.patient, types, known, answers)
            if made is not None:
                return made, extra
        resources = resolve([patient, *merged], folded, sources, context=context, known=known)
        if types:
            resources = [
                r for r in resources if r["resourceType"] in types or r["resourceType"] == "Patient"
            ]
        if self.ukcore is not None:
            resources = self.ukcore.shape_resources(resources)
        made = Made(person.patient, types, known, answers, resources, contributed)
        if self.memo is not None:
            self.memo.put(person_id, made)
        return made, extra
