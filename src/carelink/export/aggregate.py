"""The aggregate profile: counts of people with each fact and in the cohort, as FHIR
MeasureReports stratified by sex, 10-year age band and postcode area, small numbers
suppressed."""

from __future__ import annotations

from collections import Counter
from contextlib import aclosing
from datetime import date
from typing import Any

import orjson

from carelink.anonymise import release, shapes
from carelink.anonymise.disclosure import (
    small_numbers,
)
from carelink.export.anonymous import released_qi
from carelink.export.reading import Consented
from carelink.export.tables import Output

Json = dict[str, Any]

AGGREGATE_MEASURE = "https://carelink.example/Measure/people-with-a-fact"
COHORT_MEASURE = "https://carelink.example/Measure/people-in-the-cohort"
STRATIFIER = "sex, 10-year age band, postcode area"
SUPPRESSED_URL = "https://carelink.example/StructureDefinition/small-number-suppressed"


async def aggregate_release(each: Consented, out: Output, today: date) -> int:
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
    async with aclosing(each) as records:
        async for person, kept in records:
            if not any(r.get("resourceType") == "Patient" for r in kept):
                continue
            stratum = released_qi(person, today, {"age": 2, "sex": 0, "postcode": 2})
            cohort[stratum] += 1
            counted += 1
            kinds = {d.ladder(bands)[-1] for d in map(release.reduce, kept) if d is not None}
            for kind in kinds:
                facts.setdefault(kind, Counter())[stratum] += 1
    period = {"start": "1900-01-01", "end": today.isoformat()}
    out.write(measure_report(COHORT_MEASURE, None, cohort, period, today))
    for kind in sorted(facts):
        rtype, content = orjson.loads(kind)
        out.write(measure_report(AGGREGATE_MEASURE, (rtype, content), facts[kind], period, today))
    return counted


def count_cell(n: int) -> Json:
    """A population or stratum count under the small-number rule, as FHIR allows it (an
    integer, or no count and an extension saying it was suppressed)."""
    shown = small_numbers(n)
    if shown == "*":
        return {"extension": [{"url": SUPPRESSED_URL, "valueString": "1 to 7"}]}
    return {"count": int(shown)}


def measure_report(
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
        **count_cell(sum(counts.values())),
    }
    strata = []
    for stratum in sorted(counts, key=lambda s: tuple(str(x) for x in s)):
        shown = count_cell(counts[stratum])
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
        code_path = shapes.SHAPES[rtype].code
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
