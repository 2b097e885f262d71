"""The extract pipeline: cohort, opt-outs, disclosure control, federation, de-identification.

Streaming end to end: people are taken one at a time, their record federated
from every source, filtered, de-identified and appended to one NDJSON file
per resource type, so memory does not grow with the extract. Used by the
Bulk Data ``$export`` jobs and by ``carelink extract``.

Profiles (``consent/deid/<profile>.json``):

- ``pseudonymised``: linkable within one project (keyed pseudonyms and a
  keyed per-person date shift, both derived for that project from the master
  key), minimised to an allow-list of types and elements
  (``anonymise.minimise``); the national data opt-out and GP type 1 opt-outs
  are applied;
- ``anonymised``: an allow-listed, k^m-anonymous release with fresh ids
  (``AnonymousRelease``, ``anonymise.release``), measured by running the
  stated intruder against it (``anonymise.intruder``) and refused when the
  intruder singles out more than 1/k of the released people. Opt-outs do not
  apply to a release that passes (consent/README.md), and the manifest says so.

Consent for secondary use (with a ``Guard``): categories the policy keeps
out of secondary use (``secondaryUseExcludes``) are never extracted, and the
patients' Consents are read for the extract's purpose where the policy says
(``secondaryUseObjections``); the manifest counts what was withheld, small
numbers suppressed. Condition cohorts are found in a first pass over the
population (nothing written), so the anonymised profile's k-anonymity holds
over the cohort that is actually released.

The source answer caches are not fed by an extract (``bulk_read``): a scan
of the whole population would otherwise grow the process and evict the
clinicians' hot answers.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from carelink.anonymise import intruder, release
from carelink.anonymise.disclosure import (
    HIERARCHIES,
    Refused,
    Report,
    Thresholds,
    keep_level,
    protect,
    small_numbers,
)
from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.minimise import minimise
from carelink.anonymise.rules import load as load_rules
from carelink.consent import Actor, Guard, Policy
from carelink.errors import AccessDenied, ConfigError, ExportError, InvalidRequest, NotFound
from carelink.export.tables import Columns, flatten
from carelink.federation import SharedRecord
from carelink.federation.fanout import NOT_KNOWN, OK
from carelink.federation.query import criteria
from carelink.federation.record import Federated
from carelink.fhir.jsonio import read_config
from carelink.sources.base import bulk_read
from carelink.storage import IndexStore, PersonRow

Json = dict[str, Any]
PROFILES = ("pseudonymised", "anonymised", "aggregate")
AGE_BAND_URL = "https://carelink.example/StructureDefinition/age-band"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED = "http://snomed.info/sct"


@dataclass(frozen=True)
class Cohort:
    """Who is in the extract: everyone, a GP practice's or a primary care network's
    registered patients, or people with a condition."""

    kind: str = "all"  # all | practice | pcn | condition
    value: str = ""
    #: a PCN's member practices (ODS codes), fixed when the export is asked for
    practices: tuple[str, ...] = ()

    @classmethod
    def from_group(cls, group_id: str, pcns: Mapping[str, Pcn] | None = None) -> Cohort:
        """``practice-<ODS>``, ``pcn-<ODS>`` (from the configured PCN list) or
        ``condition-<SNOMED code>``; ``NotFound`` for a group that does not exist."""
        kind, _, value = group_id.partition("-")
        if kind not in ("practice", "pcn", "condition") or not value:
            raise NotFound(
                f"Group/{group_id} is not known: groups are practice-<ODS code>, "
                "pcn-<ODS code> or condition-<SNOMED CT code>"
            )
        if kind == "pcn":
            if not pcns:
                raise NotFound(
                    f"Group/{group_id}: no primary care networks are configured (CARELINK_PCNS)"
                )
            pcn = pcns.get(value)
            if pcn is None:
                raise NotFound(f"Group/{group_id}: {value} is not a configured PCN")
            return cls(kind, value, pcn.practices)
        return cls(kind, value)

    def holds(self, practice: str | None) -> bool:
        """Is a person registered with ``practice`` in the cohort (before any condition)?"""
        if self.kind == "practice":
            return practice == self.value
        if self.kind == "pcn":
            return practice in self.practices
        return True


@dataclass(frozen=True)
class Pcn:
    """A primary care network: its ODS code, name and member practices."""

    code: str
    name: str
    practices: tuple[str, ...]


_ODS = re.compile(r"^[A-Z0-9]{3,10}$")


def load_pcns(path: Path) -> dict[str, Pcn]:
    """The PCN list: ``{"<PCN ODS code>": {"name": ..., "practices": ["<ODS>", ...]}}``;
    ``ConfigError`` naming the file and the entry that is wrong."""
    document, _ = read_config(path, "PCN list")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the PCN list is an object of PCN code -> entry")
    out = {}
    owner: dict[str, str] = {}
    for code, entry in document.items():
        where = f"{path}: PCN {code}"
        if not _ODS.match(code):
            raise ConfigError(f"{where}: not an ODS code")
        if not isinstance(entry, dict) or set(entry) - {"name", "practices"}:
            raise ConfigError(f"{where}: an entry has name and practices only")
        practices = entry.get("practices")
        if not isinstance(practices, list) or not practices:
            raise ConfigError(f"{where}: practices must be a non-empty list of ODS codes")
        for practice in practices:
            if not isinstance(practice, str) or not _ODS.match(practice):
                raise ConfigError(f"{where}: {practice!r} is not an ODS code")
            if practice in owner:
                raise ConfigError(f"{where}: {practice} already belongs to {owner[practice]}")
            owner[practice] = code
        out[code] = Pcn(code, str(entry.get("name", code)), tuple(practices))
    return out


@dataclass(frozen=True)
class ExtractSpec:
    """What an analyst asked for."""

    project: str
    profile: str = "anonymised"
    types: frozenset[str] | None = None
    since: datetime | None = None
    type_filters: dict[str, list[dict[str, list[str]]]] = field(default_factory=dict)
    cohort: Cohort = Cohort()
    k: int = 5
    max_suppressed: float = 0.1
    #: facts about a person's care the stated intruder knows (anonymised extracts)
    m: int = 2
    purpose: str = "HOPERAT"  # the v3 ActReason the extract serves (a secondary-use purpose)

    def check(self) -> None:
        """Refuse a request the pipeline cannot honour (``InvalidRequest``)."""
        if self.profile not in PROFILES:
            raise InvalidRequest(f"profile must be one of {', '.join(PROFILES)}", "profile")
        if not self.project:
            raise InvalidRequest("an extract needs a project", "project")
        if not 2 <= self.k <= 1000:
            raise InvalidRequest("k must be between 2 and 1000", "k")
        if not 1 <= self.m <= 3:
            raise InvalidRequest("m (facts the intruder knows) must be 1, 2 or 3", "m")
        for rtype, filters in self.type_filters.items():
            for f in filters:
                _, unknown = criteria(rtype, f)
                if unknown:
                    raise InvalidRequest(
                        f"_typeFilter {rtype}: unsupported parameter {unknown[0]}", "_typeFilter"
                    )


class Output:
    """One NDJSON file per resource type, appended as people are processed."""

    def __init__(self, directory: Path, tabulate: bool = False, name: str = "") -> None:
        self.directory = directory
        #: the extract's name (``dateShiftScope: folder``): the job id, or the output folder
        self.name = name or directory.name
        directory.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self.tabulate = tabulate
        #: each type's table columns, recorded as written when ``tabulate`` (for Parquet)
        self.columns: dict[str, Columns] = {}
        self._files: dict[str, Any] = {}

    def write(self, resource: Json) -> None:
        """Append one resource."""
        rtype = str(resource["resourceType"])
        f = self._files.get(rtype)
        if f is None:
            f = (self.directory / f"{rtype}.ndjson").open("wb")
            self._files[rtype] = f
        f.write(orjson.dumps(resource) + b"\n")
        self.counts[rtype] = self.counts.get(rtype, 0) + 1
        if self.tabulate:
            cols = self.columns.get(rtype)
            if cols is None:
                cols = self.columns[rtype] = Columns()
            cols.add(flatten(resource))

    def close(self) -> None:
        """Flush and close every file."""
        for f in self._files.values():
            f.close()
        self._files.clear()


@dataclass
class Result:
    """What an extract produced."""

    counts: dict[str, int]
    people: int
    excluded: dict[str, int]
    risk: Report | None
    profile: str
    project: str
    withheld: dict[str, int] = field(default_factory=dict)
    consents_applied: bool = False
    #: source -> people whose data from it could not be read (after retries)
    incomplete: dict[str, int] = field(default_factory=dict)
    #: the same while finding a condition cohort's members
    incomplete_cohort: dict[str, int] = field(default_factory=dict)
    #: were the opt-outs counted among the cohort's own people (not for condition cohorts)
    opt_outs_counted: bool = True

    def errors(self) -> list[Json]:
        """One OperationOutcome per source that could not be read for someone (the Bulk
        Data error file): the extract is complete except for what these say."""
        out = [
            _incomplete(
                f"source {source} could not be read for {small_numbers(n)} of the extract's "
                f"people after {ATTEMPTS} attempts: their records here lack its data"
            )
            for source, n in sorted(self.incomplete.items())
        ]
        out += [
            _incomplete(
                f"source {source} could not be read for {small_numbers(n)} of the people "
                f"considered for the cohort after {ATTEMPTS} attempts: anyone whose condition "
                "is recorded only there is missing from it"
            )
            for source, n in sorted(self.incomplete_cohort.items())
        ]
        return out

    def manifest_extension(self) -> Json:
        """The carelink part of a manifest (small numbers suppressed)."""
        out: Json = {
            "profile": self.profile,
            "project": self.project,
            # released people are counted exactly: the files show them anyway
            "people": self.people,
            "optOutsExcluded": {k: small_numbers(v) for k, v in self.excluded.items()},
        }
        if self.profile == "aggregate":
            # nothing is released at record level: the people counted are a count too
            out["people"] = small_numbers(self.people)
            out["optOutsExcluded"] = (
                "not applied: aggregate tables under the small-number rule are anonymous, "
                "which the national data opt-out does not cover"
            )
        elif self.profile == "anonymised":
            out["optOutsExcluded"] = (
                "not applied: the extract passed the intruder test (anonymous in the ICO "
                "sense), which the national data opt-out does not cover"
            )
        elif not self.opt_outs_counted:
            out["optOutsExcluded"] = (
                "applied before the condition cohort was found and not counted: counting "
                "them would mean reading the records of people who opted out"
            )
        out["consent"] = {
            "sensitiveCategoriesWithheld": small_numbers(self.withheld.get("sensitive", 0)),
            "objections": (
                {"resourcesWithheld": small_numbers(self.withheld.get("objection", 0))}
                if self.consents_applied
                else f"not applied to {self.profile} extracts by the policy"
            ),
        }
        if self.incomplete:
            out["incompleteSources"] = {k: small_numbers(v) for k, v in self.incomplete.items()}
        if self.incomplete_cohort:
            out["incompleteCohortSources"] = {
                k: small_numbers(v) for k, v in self.incomplete_cohort.items()
            }
        if self.risk is not None:
            out["risk"] = self.risk.as_json()
        return out


Progress = Callable[[int, int], Awaitable[bool]]  # (done, total) -> keep going?


def _age(birth: str | None, on: date) -> int | None:
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
        practice = _practice(orjson.loads(row.patient)) if with_practice else None
        return cls(row.id, row.nhs_number, row.birth_date, row.gender, row.postcode, practice)


def _practice(patient: Json) -> str | None:
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


def _wanted(r: Json, spec: ExtractSpec) -> bool:
    rtype = str(r.get("resourceType"))
    if spec.types is not None and rtype not in spec.types:
        return False
    if not _since_ok(r, spec.since):
        return False
    filters = spec.type_filters.get(rtype)
    if filters:
        return any(all(c.matches(r) for c in criteria(rtype, f)[0]) for f in filters)
    return True


ATTEMPTS = 3  # reads of a person's record before a failing source is given up for them
RETRY_SECONDS = 0.2


IN_FLIGHT = 8  # people whose records are being read ahead of the one being written


class _Reader:
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


def _incomplete(text: str) -> Json:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "incomplete", "diagnostics": text}],
    }


def _one_patient(r: Json, person: Member) -> bool:
    """One Patient per person: the index's merged Patient, not each source's copy (copies
    would repeat the person in the Patient table, and in anonymised extracts would make
    one person look like a whole equivalence class)."""
    return r.get("resourceType") != "Patient" or r.get("id") == person.id


def _has_condition(resources: Iterable[Json], code: str) -> bool:
    return any(
        r.get("resourceType") == "Condition"
        and any(c.get("code") == code for c in (r.get("code") or {}).get("coding", ()))
        for r in resources
    )


async def _everyone(index: IndexStore) -> AsyncIterator[PersonRow]:
    """Every person in the index, in id order, each batch read off the event loop."""
    after = ""
    while rows := await index.db.run(index.people_after, after):
        for row in rows:
            yield row
        after = rows[-1].id


async def run(
    record: SharedRecord,
    spec: ExtractSpec,
    master_key: bytes,
    rules_dir: Path,
    opt_outs: dict[str, set[str]],
    out: Output,
    progress: Progress | None = None,
    today: date | None = None,
    *,
    guard: Guard,
) -> Result:
    """Run one extract into ``out``; ``ExportError`` (``Refused``) if it cannot be shipped."""
    spec.check()
    today = today or datetime.now(UTC).date()
    consent = _SecondaryUse(guard, spec)
    keys = ProjectKeys.for_project(master_key, spec.project)
    excluded = {"ndop": 0, "type1": 0}
    people: list[Member] = []
    by_practice = spec.cohort.kind in ("practice", "pcn")
    # The opt-outs apply to every release that is not anonymous (consent/README.md):
    # the pseudonymised profile. They are applied before anyone's record is read.
    applies_opt_outs = spec.profile == "pseudonymised"
    async for row in _everyone(record.index):  # streamed: only the light rows are kept
        member = Member.of(row, with_practice=by_practice)
        if not spec.cohort.holds(member.practice):
            continue
        if applies_opt_outs:
            kinds = opt_outs.get(member.nhs_number or "", set())
            for kind in kinds:
                excluded[kind] = excluded.get(kind, 0) + 1
            if kinds:
                continue
        people.append(member)
    report: Report | None = None
    written_people = 0
    reader, cohort_reader = _Reader(record), _Reader(record)
    try:
        with bulk_read():
            if spec.cohort.kind == "condition":
                people = await _with_condition(
                    cohort_reader, people, spec.cohort.value, progress, consent
                )
            if spec.profile == "anonymised":
                written_people, report = await _anonymous(
                    reader, people, spec, consent, out, progress, today
                )
            elif spec.profile == "aggregate":
                written_people = await _aggregate(
                    reader, people, spec, consent, out, progress, today
                )
            else:
                engine = Anonymiser(
                    load_rules(rules_dir / f"{spec.profile}.json"), keys, folder=out.name
                )
                written_people = await _pseudonymous(
                    reader, people, spec, consent, engine, keys, out, progress
                )
    finally:
        out.close()
    return Result(
        dict(out.counts),
        written_people,
        excluded,
        report,
        spec.profile,
        spec.project,
        dict(consent.withheld),
        consent.objections,
        dict(reader.incomplete),
        dict(cohort_reader.incomplete),
        opt_outs_counted=spec.cohort.kind != "condition",
    )


async def _pseudonymous(
    reader: _Reader,
    people: list[Member],
    spec: ExtractSpec,
    consent: _SecondaryUse,
    engine: Anonymiser,
    keys: ProjectKeys,
    out: Output,
    progress: Progress | None,
) -> int:
    """Each person's record through the profile's rules, streamed; the people written."""
    written_people = 0
    total = len(people)
    async with aclosing(reader.ahead(people, None)) as records:
        async for i, person, fed in records:
            if progress is not None and not await progress(i, total):
                raise ExportError("cancelled")
            wanted = [r for r in fed.resources if _one_patient(r, person) and _wanted(r, spec)]
            wanted = consent.filter(fed, wanted)
            pseudonym = keys.pseudonym("person:" + person.id)
            wrote = False
            for r in wanted:
                done = engine.apply(r, person=pseudonym, file=f"{r.get('resourceType')}.ndjson")
                if done is None:  # processingErrors: skip
                    continue
                done = minimise(done)  # only the allowed types and elements
                if done is None:
                    continue
                out.write(done)
                wrote = True
            written_people += wrote
    return written_people


SPOOL = ".anonymise-spool.ndjson"


async def _anonymous(
    reader: _Reader,
    people: list[Member],
    spec: ExtractSpec,
    consent: _SecondaryUse,
    out: Output,
    progress: Progress | None,
    today: date,
) -> tuple[int, Report]:
    """The anonymised release of the people's federated records (``AnonymousRelease``)."""
    anonymous = AnonymousRelease(spec, out, today)
    total = len(people)
    try:
        async with aclosing(reader.ahead(people, None)) as records:
            async for i, person, fed in records:
                if progress is not None and not await progress(i, total):
                    raise ExportError("cancelled")
                candidates = [
                    r
                    for r in fed.resources
                    if _one_patient(r, person)
                    and (r.get("resourceType") == "Patient" or _wanted(r, spec))
                ]
                anonymous.add(person, consent.filter(fed, candidates))
        return anonymous.finish()
    finally:
        anonymous.discard()


class AnonymousRelease:
    """An anonymised release (``anonymise.release``), person by person, then all at once.

    ``add`` spools each person's allow-listed facts (the record itself is not
    kept); ``finish`` applies k-anonymity to the Patients and k^m-anonymity to
    the facts, runs the intruder against the result, and only then writes
    anything: ``Refused`` when the intruder singles out more than 1/k of the
    released people, or when k cannot be reached within the allowed
    suppression. A domain object: a test drives it with any records.
    """

    def __init__(self, spec: ExtractSpec, out: Output, today: date) -> None:
        self.spec = spec
        self.out = out
        self.today = today
        self.bands = release.Bands()
        self.people: list[Member] = []
        self.spool_path = out.directory / SPOOL
        self._spool = self.spool_path.open("wb")

    def add(self, person: Member, resources: list[Json]) -> None:
        """One person's resources as consent lets them into the extract (their merged
        Patient among them, or the person is not released at all)."""
        if not any(r.get("resourceType") == "Patient" for r in resources):
            return  # consent keeps the person out: none of their facts go
        drafts = [d for d in map(release.reduce, resources) if d is not None]
        for d in drafts:
            self.bands.add(d)
        self._spool.write(orjson.dumps([[d.rtype, d.content, d.quantity] for d in drafts]) + b"\n")
        self.people.append(person)

    def discard(self) -> None:
        """Remove the spool (always: it holds facts before disclosure control)."""
        self._spool.close()
        self.spool_path.unlink(missing_ok=True)

    def _cohort_own(self, ladder: list[bytes], sensitive: bool) -> bool:
        """Is this the condition cohort's own condition (kept in preference)?"""
        cohort = self.spec.cohort
        return (
            cohort.kind == "condition"
            and not sensitive
            and (
                ladder[0].startswith(b'["Condition"') and f'"{cohort.value}"'.encode() in ladder[-1]
            )
        )

    def _sensitive(self, draft: release.Draft) -> bool:
        """Is the fact a diagnosis the diversity rule protects? Not a condition cohort's
        own condition: membership of the cohort already says it of everyone."""
        if draft.rtype not in release.SENSITIVE_TYPES:
            return False
        cohort = self.spec.cohort
        if cohort.kind != "condition":
            return True
        codings = (draft.content.get("code") or {}).get("coding", ())
        return not any(c.get("code") == cohort.value for c in codings)

    def finish(self) -> tuple[int, Report]:
        """Protect, attack, write; the people written and the risk report."""
        self._spool.close()
        kept_df, report = protect(_quasi(self.people, self.today), QUASI, _thresholds(self.spec))
        levels = report.levels
        keep = set(kept_df["id"])
        self.bands.fix()
        plan = release.Plan()
        members: list[Member] = []
        truth: list[tuple[intruder.Fact, ...]] = []
        with self.spool_path.open("rb") as spool:
            for person, line in zip(self.people, spool, strict=True):
                if person.id not in keep:
                    continue
                drafts = [
                    release.Draft(t, c, (q[0], q[1]) if q else None)
                    for t, c, q in orjson.loads(line)
                ]
                facts = [(d.ladder(self.bands), self._sensitive(d)) for d in drafts]
                plan.add_person(facts, [f for f, s in facts if self._cohort_own(f, s)])
                members.append(person)
                truth.append(tuple(release.project(ladder[0])[0] for ladder, _ in facts))
        qis = [_released_qi(p, self.today, levels) for p in members]
        classes: dict[tuple[Any, ...], list[int]] = {}
        for i, qi in enumerate(qis):
            classes.setdefault(qi, []).append(i)
        cost = release.enforce(plan, classes.values(), self.spec.k, self.spec.m)
        shown = [
            {p for f in plan.people[i] for p in release.project(plan.facts[f])}
            for i in range(len(members))
        ]
        known = [intruder.Known(qis[i], truth[i], i) for i in range(len(members))]
        attack = intruder.attack(known, qis, shown, self.spec.m)
        report.facts = {
            "m": self.spec.m,
            "considered": cost.facts_in,
            "released": cost.facts_out,
            "retainedShare": (cost.facts_out / cost.facts_in) if cost.facts_in else 1.0,
            "rule": (
                f"every set of at most {self.spec.m} facts a person holds is held by at least "
                f"{self.spec.k} people of their class; no diagnosis is held by a whole class"
            ),
            "notCovered": (
                "the number of distinct facts a person has; an intruder knowing more than "
                f"{self.spec.m} facts; what can be inferred from {self.spec.m} known facts"
            ),
        }
        report.intruder = attack.as_json()
        if attack.rate > 1 / self.spec.k:
            report.met = False
            report.reasons.append(
                f"the intruder re-identified {attack.rate:.1%} of the released people (at most "
                f"1/k = {1 / self.spec.k:.1%}): the cohort cannot be released at record level, "
                "only as aggregate tables under the small-number rule (profile=aggregate)"
            )
            raise Refused(report)
        for i in range(len(members)):
            pid = release.fresh_id()
            if self.spec.types is None or "Patient" in self.spec.types:
                self.out.write(_generalised_patient(pid, qis[i]))
            for f in sorted(plan.people[i]):
                rtype, content = orjson.loads(plan.facts[f])
                self.out.write(release.resource(rtype, content, pid, release.subject_of(rtype)))
        return len(members), report


AGGREGATE_MEASURE = "https://carelink.example/Measure/people-with-a-fact"
COHORT_MEASURE = "https://carelink.example/Measure/people-in-the-cohort"
STRATIFIER = "sex, 10-year age band, postcode area"
SUPPRESSED_URL = "https://carelink.example/StructureDefinition/small-number-suppressed"


async def _aggregate(
    reader: _Reader,
    people: list[Member],
    spec: ExtractSpec,
    consent: _SecondaryUse,
    out: Output,
    progress: Progress | None,
    today: date,
) -> int:
    """Aggregate tables (``MeasureReport``, type summary): how many people of the cohort
    have each coded fact, overall and by sex, 10-year age band and postcode area, every
    count under the small-number rule (0 is not shown, 1 to 7 is suppressed, the rest
    rounded to 5), with no exact total anywhere beside them. For cohorts that cannot be
    released at record level. The people counted (a count too)."""
    bands = release.Bands()
    bands.fix()
    cohort: Counter[tuple[Any, ...]] = Counter()
    facts: dict[bytes, Counter[tuple[Any, ...]]] = {}
    counted = 0
    total = len(people)
    async with aclosing(reader.ahead(people, None)) as records:
        async for i, person, fed in records:
            if progress is not None and not await progress(i, total):
                raise ExportError("cancelled")
            candidates = [
                r
                for r in fed.resources
                if _one_patient(r, person)
                and (r.get("resourceType") == "Patient" or _wanted(r, spec))
            ]
            kept = consent.filter(fed, candidates)
            if not any(r.get("resourceType") == "Patient" for r in kept):
                continue
            stratum = _released_qi(person, today, {"age": 2, "sex": 0, "postcode": 2})
            cohort[stratum] += 1
            counted += 1
            kinds = {d.ladder(bands)[-1] for d in map(release.reduce, kept) if d is not None}
            for kind in kinds:
                facts.setdefault(kind, Counter())[stratum] += 1
    period = {"start": "1900-01-01", "end": today.isoformat()}
    out.write(_measure_report(COHORT_MEASURE, None, cohort, period, today))
    for kind in sorted(facts):
        rtype, content = orjson.loads(kind)
        out.write(_measure_report(AGGREGATE_MEASURE, (rtype, content), facts[kind], period, today))
    return counted


def _count(n: int) -> Json:
    """A population or stratum count under the small-number rule, as FHIR allows it (an
    integer, or no count and an extension saying it was suppressed)."""
    shown = small_numbers(n)
    if shown == "*":
        return {"extension": [{"url": SUPPRESSED_URL, "valueString": "1 to 7"}]}
    return {"count": int(shown)}


def _measure_report(
    measure: str,
    fact: tuple[str, Json] | None,
    counts: Counter[tuple[Any, ...]],
    period: Json,
    today: date,
) -> Json:
    population = {
        "code": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                    "code": "initial-population",
                }
            ]
        },
        **_count(sum(counts.values())),
    }
    strata = []
    for stratum in sorted(counts, key=lambda s: tuple(str(x) for x in s)):
        shown = _count(counts[stratum])
        if shown.get("count") == 0:
            continue
        strata.append(
            {
                "value": {"text": " | ".join("unknown" if x is None else str(x) for x in stratum)},
                "population": [{**shown}],
            }
        )
    group: Json = {
        "population": [population],
        "stratifier": [{"code": [{"text": STRATIFIER}], "stratum": strata}],
    }
    if fact is not None:
        rtype, content = fact
        code_path = release.SHAPES[rtype].code
        group["code"] = {
            "coding": [
                c
                for concept in (
                    content[code_path]
                    if isinstance(content[code_path], list)
                    else [content[code_path]]
                )
                for c in concept["coding"]
            ],
            "text": f"people with a {rtype} of this code",
        }
    return {
        "resourceType": "MeasureReport",
        "id": release.fresh_id(),
        "meta": {"security": [dict(release.SECURITY)]},
        "status": "complete",
        "type": "summary",
        "measure": measure,
        "date": today.isoformat(),
        "period": period,
        "group": [group],
    }


def _released_qi(person: Member, today: date, levels: dict[str, int]) -> tuple[Any, ...]:
    """The person's quasi-identifiers as the release shows them (sex, age band, area)."""
    values = {
        "age": _age(person.birth_date, today),
        "sex": person.gender,
        "postcode": person.postcode,
    }
    return tuple(HIERARCHIES.get(q, (keep_level, 1))[0](values[q], levels.get(q, 0)) for q in QUASI)


def permitted(policy: Policy, spec: ExtractSpec) -> None:
    """Refuse (``AccessDenied``) an extract the consent policy does not allow: a purpose
    that is not secondary use, or a condition cohort in a category kept out of secondary
    use (membership alone would disclose it)."""
    allowed = policy.source.secondaryUsePurposes
    if spec.purpose not in allowed:
        raise AccessDenied(
            f"purpose of use {spec.purpose or '(none)'} is not a secondary-use purpose under "
            f"the consent policy ({', '.join(allowed)})"
        )
    if spec.cohort.kind == "condition":
        category = policy.by_code.get((SNOMED, spec.cohort.value))
        if category in policy.secondary_excludes:
            raise AccessDenied(
                f"Group/condition-{spec.cohort.value} is coded as {category}, a category the "
                "consent policy keeps out of secondary use"
            )


class _SecondaryUse:
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


async def _with_condition(
    reader: _Reader,
    people: list[Member],
    code: str,
    progress: Progress | None,
    consent: _SecondaryUse,
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
            if _has_condition(fed.resources, code) and _has_condition(
                consent.filter(fed, fed.resources, count=False), code
            ):
                members.append(person)
    return members


def _quasi(people: list[Member], today: date) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [p.id for p in people],
            "age": [_age(p.birth_date, today) for p in people],
            "sex": [p.gender for p in people],
            "postcode": [p.postcode for p in people],
        }
    )


QUASI = ("age", "sex", "postcode")


def _thresholds(spec: ExtractSpec) -> Thresholds:
    return Thresholds(k=spec.k, max_suppressed=spec.max_suppressed)


def _generalised_patient(pid: str, qi: tuple[Any, ...]) -> Json:
    """The anonymised Patient: exactly its released quasi-identifiers (age band, sex,
    postcode area, each only if not generalised away), under a fresh id."""
    values = dict(zip(QUASI, qi, strict=True))
    out: Json = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"security": [dict(release.SECURITY)]},
    }
    if values["sex"] is not None:
        out["gender"] = values["sex"]
    if values["age"] is not None:
        out["extension"] = [{"url": AGE_BAND_URL, "valueString": str(values["age"])}]
    if values["postcode"]:
        out["address"] = [{"postalCode": values["postcode"], "country": "GB"}]
    return out


def type_filters(values: Iterable[str]) -> dict[str, list[dict[str, list[str]]]]:
    """Parse ``_typeFilter`` values (``Observation?category=laboratory``)."""
    from urllib.parse import parse_qs

    out: dict[str, list[dict[str, list[str]]]] = {}
    for value in values:
        for part in value.split(","):
            rtype, sep, query = part.partition("?")
            if not sep or not rtype:
                raise InvalidRequest(f"_typeFilter {part!r} is not Type?query", "_typeFilter")
            out.setdefault(rtype, []).append(parse_qs(query, keep_blank_values=True))
    return out
