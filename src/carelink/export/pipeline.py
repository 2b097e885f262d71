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

import shutil
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from carelink.anonymise.disclosure import (
    Report,
)
from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.minimise import minimise
from carelink.anonymise.rules import load as load_rules
from carelink.consent import Guard
from carelink.export.aggregate import aggregate_release
from carelink.export.anonymous import anonymous_release
from carelink.export.reading import (
    Member,
    Reader,
    SecondaryUse,
    consented,
    everyone_in,
    with_condition,
)
from carelink.export.spec import ExtractSpec, Progress, Result
from carelink.export.tables import Output, to_parquet, write_errors
from carelink.federation import SharedRecord
from carelink.sources.base import bulk_read


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
    consent = SecondaryUse(guard, spec)
    keys = ProjectKeys.for_project(master_key, spec.project)
    excluded = {"ndop": 0, "type1": 0}
    people: list[Member] = []
    by_practice = spec.cohort.kind in ("practice", "pcn")
    # The opt-outs apply to every release that is not anonymous (consent/README.md):
    # the pseudonymised profile. They are applied before anyone's record is read.
    applies_opt_outs = spec.profile == "pseudonymised"
    async for row in everyone_in(record.index):  # streamed: only the light rows are kept
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
    reader, cohort_reader = Reader(record), Reader(record)
    try:
        with bulk_read():
            if spec.cohort.kind == "condition":
                people = await with_condition(
                    cohort_reader, people, spec.cohort.value, progress, consent
                )
            if spec.profile == "anonymised":
                each = consented(reader, people, spec, consent, progress, patients=True)
                written_people, report = await anonymous_release(each, spec, out, today)
            elif spec.profile == "aggregate":
                each = consented(reader, people, spec, consent, progress, patients=True)
                written_people = await aggregate_release(each, out, today)
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
    reader: Reader,
    people: list[Member],
    spec: ExtractSpec,
    consent: SecondaryUse,
    engine: Anonymiser,
    keys: ProjectKeys,
    out: Output,
    progress: Progress | None,
) -> int:
    """Each person's record through the profile's rules, streamed; the people written."""
    written_people = 0
    async with aclosing(consented(reader, people, spec, consent, progress)) as records:
        async for person, wanted in records:
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


@dataclass(frozen=True)
class Extracted:
    """Where an analyst's extract was written, and what it holds."""

    directory: Path
    counts: dict[str, int]
    manifest: dict[str, Any]

    def table(self, rtype: str) -> pd.DataFrame:
        """One resource type's table as a DataFrame."""
        if rtype not in self.counts:
            raise KeyError(f"the extract has no {rtype} table")
        return pd.read_parquet(self.directory / f"{rtype}.parquet")

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table as a DataFrame (loads them all: for extracts that fit in memory)."""
        return {rtype: self.table(rtype) for rtype in sorted(self.counts)}


async def extract(
    record: SharedRecord,
    spec: ExtractSpec,
    master_key: bytes,
    rules_dir: Path,
    opt_outs: dict[str, set[str]],
    out: Path,
    progress: Progress | None = None,
    *,
    guard: Guard,
) -> Extracted:
    """The analyst's extract: NDJSON, then one flattened, typed Parquet table per resource
    type, a data dictionary, the manifest and the risk report, all in ``out``."""
    raw = out / "ndjson"
    output = Output(raw, tabulate=True, name=out.name)
    try:
        result = await run(
            record, spec, master_key, rules_dir, opt_outs, output, progress, guard=guard
        )
        entries: list[dict[str, Any]] = []
        for rtype in sorted(result.counts):
            entries += to_parquet(
                raw / f"{rtype}.ndjson", out / f"{rtype}.parquet", output.columns[rtype]
            )
    except BaseException:
        # Refused or failed: nothing half-written stays (NDJSON or tables).
        shutil.rmtree(raw, ignore_errors=True)
        for rtype in output.counts:
            (out / f"{rtype}.parquet").unlink(missing_ok=True)
        raise
    (out / "dictionary.json").write_bytes(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
    errors = result.errors()
    write_errors(out, errors)
    manifest = {
        "counts": result.counts,
        "errors": [o["issue"][0]["diagnostics"] for o in errors],
        "carelink": result.manifest_extension(),
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if result.risk is not None:
        (out / "risk.txt").write_text(result.risk.summary() + "\n")
    return Extracted(out, dict(result.counts), manifest)
