"""The anonymised profile: a k^m-anonymous release (``AnonymousRelease``) of the
people's federated records, measured by the stated intruder before it is shipped."""

from __future__ import annotations

from contextlib import aclosing
from datetime import date
from typing import Any

import orjson
import pandas as pd

from carelink.anonymise import intruder, km_anonymity, release, shapes
from carelink.anonymise.disclosure import (
    HIERARCHIES,
    Refused,
    Report,
    Thresholds,
    keep_level,
    protect,
)
from carelink.export.reading import Consented, Member, age_on
from carelink.export.spec import AGE_BAND_URL, ExtractSpec
from carelink.export.tables import Output

Json = dict[str, Any]

SPOOL = ".anonymise-spool.ndjson"


async def anonymous_release(
    each: Consented, spec: ExtractSpec, out: Output, today: date
) -> tuple[int, Report]:
    """The anonymised release of the people's federated records (``AnonymousRelease``)."""
    anonymous = AnonymousRelease(spec, out, today)
    try:
        async with aclosing(each) as records:
            async for person, kept in records:
                anonymous.add(person, kept)
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
        if draft.rtype not in shapes.SENSITIVE_TYPES:
            return False
        cohort = self.spec.cohort
        if cohort.kind != "condition":
            return True
        codings = (draft.content.get("code") or {}).get("coding", ())
        return not any(c.get("code") == cohort.value for c in codings)

    def finish(self) -> tuple[int, Report]:
        """Protect, attack, write; the people written and the risk report."""
        self._spool.close()
        kept_df, report = protect(
            quasi_frame(self.people, self.today), QUASI, thresholds_of(self.spec)
        )
        levels = report.levels
        keep = set(kept_df["id"])
        self.bands.fix()
        plan = km_anonymity.Plan()
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
        qis = [released_qi(p, self.today, levels) for p in members]
        classes: dict[tuple[Any, ...], list[int]] = {}
        for i, qi in enumerate(qis):
            classes.setdefault(qi, []).append(i)
        cost = km_anonymity.enforce(plan, classes.values(), self.spec.k, self.spec.m)
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
                self.out.write(generalised_patient(pid, qis[i]))
            for f in sorted(plan.people[i]):
                rtype, content = orjson.loads(plan.facts[f])
                self.out.write(release.resource(rtype, content, pid, release.subject_of(rtype)))
        return len(members), report


def released_qi(person: Member, today: date, levels: dict[str, int]) -> tuple[Any, ...]:
    """The person's quasi-identifiers as the release shows them (sex, age band, area)."""
    values = {
        "age": age_on(person.birth_date, today),
        "sex": person.gender,
        "postcode": person.postcode,
    }
    return tuple(HIERARCHIES.get(q, (keep_level, 1))[0](values[q], levels.get(q, 0)) for q in QUASI)


def quasi_frame(people: list[Member], today: date) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [p.id for p in people],
            "age": [age_on(p.birth_date, today) for p in people],
            "sex": [p.gender for p in people],
            "postcode": [p.postcode for p in people],
        }
    )


QUASI = ("age", "sex", "postcode")


def thresholds_of(spec: ExtractSpec) -> Thresholds:
    return Thresholds(k=spec.k, max_suppressed=spec.max_suppressed)


def generalised_patient(pid: str, qi: tuple[Any, ...]) -> Json:
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
