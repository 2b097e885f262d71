"""What each source records about a person: source-neutral ``Fact``s.

``facts(seed, person, source)`` is a pure function: the same seed always
gives the same record, so a simulator regenerates any person's record on
demand. Each simulator renders facts into its own native format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from carelink.simulators import codes
from carelink.simulators.population import REFERENCE_DATE, Person


@dataclass(frozen=True)
class Fact:
    """One thing a source records about a person, in a source-neutral shape.

    Each simulator renders facts into its own native format; ``kind`` says
    what the thing is. ``local_id`` is unique within the source.
    """

    kind: str
    local_id: str
    when: datetime
    code: codes.Code | None = None
    status: str = "active"
    value: float | None = None
    unit: str | None = None
    end: datetime | None = None
    sensitivity: str | None = None
    encounter: str | None = None
    text: str | None = None
    related: codes.Code | None = None


def _when(rng: random.Random, person: Person, years: float) -> datetime:
    earliest = max(person.birth_date, REFERENCE_DATE - timedelta(days=int(365 * years)))
    span = max(1, (REFERENCE_DATE - earliest).days)
    d = earliest + timedelta(days=rng.randrange(span))
    return datetime(
        d.year, d.month, d.day, rng.randint(8, 18), rng.choice((0, 15, 30, 45)), tzinfo=UTC
    )


def facts(seed: int, person: Person, source: str) -> list[Fact]:
    """What ``source`` records about ``person``; empty if the person is not known there."""
    if source not in person.sources:
        return []
    rng = random.Random(f"{seed}:{person.index}:{source}")
    problems = codes.problems_for(seed, person.index, person.age)
    maker = {"gp": _gp, "acute": _acute, "community": _community, "social-care": _social}[source]
    return maker(rng, person, problems, seed)


def shared_allergies(seed: int, person: Person) -> list[Fact]:
    """Allergies, recorded identically by every care setting that knows the person."""
    rng = random.Random(f"{seed}:{person.index}:allergies")
    out = []
    for n, (code, p) in enumerate(codes.ALLERGIES):
        if rng.random() < p:
            onset = _when(rng, person, 30).replace(hour=0, minute=0)
            out.append(Fact("allergy", f"AL{n}", onset, code, status="active"))
    return out


def _gp(rng: random.Random, person: Person, problems: list[codes.Problem], seed: int) -> list[Fact]:
    out: list[Fact] = []
    n_enc = rng.randint(1, 4) + (person.age // 20)
    encounters = sorted(_when(rng, person, 5) for _ in range(n_enc))
    for i, when in enumerate(encounters):
        kind = codes.ENCOUNTER_GP if rng.random() < 0.4 else codes.ENCOUNTER_SURGERY
        out.append(Fact("encounter", f"E{i}", when, kind, status="finished"))
    for i, p in enumerate(problems):
        onset = _when(rng, person, 15)
        out.append(Fact("condition", f"P{i}", onset, p.snomed, sensitivity=p.sensitivity))
        if p.medication is not None:
            out.append(
                Fact(
                    "medication",
                    f"M{i}",
                    _when(rng, person, 1),
                    p.medication,
                    sensitivity=p.sensitivity,
                    text="One to be taken each day",
                )
            )
    if rng.random() < 0.25:
        out.append(
            Fact(
                "prescription",
                "RX0",
                _when(rng, person, 2),
                rng.choice((codes.AMOXICILLIN, codes.CLARITHROMYCIN)),
                status="completed",
                text="One to be taken three times a day for 7 days",
            )
        )
    for i, when in enumerate(encounters[-3:]):
        enc = f"E{len(encounters) - len(encounters[-3:]) + i}"
        if person.age >= 16:
            sys_ = rng.gauss(128 + person.age / 3, 14)
            out.append(
                Fact(
                    "bp",
                    f"BP{i}",
                    when,
                    codes.BP_PANEL,
                    value=round(sys_),
                    related=codes.BP_PANEL_LOINC,
                    unit=str(round(sys_ * 0.62 + rng.gauss(0, 6))),
                    encounter=enc,
                    status="final",
                )
            )
        code, alt, unit, lo, hi = rng.choice(codes.VITALS)
        out.append(
            Fact(
                "vital",
                f"V{i}",
                when,
                code,
                value=round(rng.uniform(lo, hi), 1),
                unit=unit,
                related=alt,
                encounter=enc,
                status="final",
            )
        )
    out.extend(shared_allergies(seed, person))
    if not any(f.kind == "allergy" for f in out) and rng.random() < 0.5:
        out.append(
            Fact(
                "allergy",
                "NKDA",
                _when(rng, person, 10),
                codes.NO_KNOWN_DRUG_ALLERGY,
                status="active",
            )
        )
    for year in range(2022, 2026):
        if person.age >= 65 and rng.random() < 0.75:
            when = datetime(year, 10, rng.randint(1, 28), 10, 0, tzinfo=UTC)
            out.append(
                Fact("immunisation", f"FLU{year}", when, codes.VACCINES["flu"], status="completed")
            )
    if person.age >= 65 and rng.random() < 0.7:
        out.append(
            Fact(
                "immunisation",
                "PPV",
                _when(rng, person, 5),
                codes.VACCINES["pneumo"],
                status="completed",
            )
        )
    if person.age >= 12 and rng.random() < 0.7:
        out.append(
            Fact(
                "immunisation",
                "COV1",
                _when(rng, person, 4),
                codes.VACCINES["covid"],
                status="completed",
            )
        )
    if rng.random() < 0.2:
        out.append(
            Fact(
                "referral",
                "REF0",
                _when(rng, person, 2),
                codes.REFERRALS[0],
                related=rng.choice(codes.REFERRAL_SERVICES),
                status="active",
            )
        )
    if person.age >= 75 and rng.random() < 0.3:
        out.append(
            Fact(
                "careplan",
                "CP0",
                _when(rng, person, 2),
                codes.EOL_CARE_PLAN,
                text="Anticipatory care plan agreed with patient and family",
            )
        )
    return out


def _acute(
    rng: random.Random, person: Person, problems: list[codes.Problem], seed: int
) -> list[Fact]:
    out: list[Fact] = []
    for i in range(rng.randint(1, 3)):
        start = _when(rng, person, 6)
        icd, snomed, proc = rng.choice(codes.ADMISSIONS)
        end = start + timedelta(days=rng.randint(0, 12), hours=rng.randint(1, 20))
        enc = f"ADM{i}"
        out.append(Fact("admission", enc, start, snomed, end=end, status="finished", related=icd))
        out.append(Fact("diagnosis", f"DX{i}", start, icd, encounter=enc, related=snomed))
        if proc is not None:
            out.append(
                Fact(
                    "procedure",
                    f"PR{i}",
                    start + timedelta(hours=6),
                    proc,
                    encounter=enc,
                    status="completed",
                )
            )
        for j, (code, unit, lo, hi) in enumerate(rng.sample(codes.LABS, 3)):
            out.append(
                Fact(
                    "lab",
                    f"LAB{i}-{j}",
                    start + timedelta(hours=2),
                    code,
                    value=round(rng.uniform(lo, hi), 1),
                    unit=unit,
                    encounter=enc,
                    status="final",
                )
            )
        if rng.random() < 0.5:
            out.append(
                Fact(
                    "prescription",
                    f"TTO{i}",
                    end,
                    rng.choice((codes.AMOXICILLIN, codes.CIPROFLOXACIN, codes.PARACETAMOL)),
                    encounter=enc,
                    status="completed",
                    text="Discharge medication",
                )
            )
        out.append(
            Fact(
                "document",
                f"DS{i}",
                end,
                codes.DISCHARGE_SUMMARY,
                encounter=enc,
                status="current",
                text=f"Discharged after treatment for {snomed.display}.",
            )
        )
    out.extend(shared_allergies(seed, person))
    return out


def _community(
    rng: random.Random, person: Person, problems: list[codes.Problem], seed: int
) -> list[Fact]:
    """Community and mental-health trust: episodes, contacts, MH problems, scores."""
    out: list[Fact] = []
    mh = [p for p in problems if p.sensitivity in ("PSY", "ETH")]
    team = "mental-health" if mh else "district-nursing"
    start = _when(rng, person, 4)
    out.append(
        Fact(
            "episode",
            "EP0",
            start,
            None,
            text=team,
            status="active",
            sensitivity="PSY" if mh else None,
        )
    )
    for i in range(rng.randint(1, 5)):
        out.append(
            Fact(
                "contact",
                f"CT{i}",
                _when(rng, person, 3),
                None,
                text=team,
                status="finished",
                encounter="EP0",
            )
        )
    for i, p in enumerate(mh):
        out.append(
            Fact(
                "condition",
                f"MH{i}",
                _when(rng, person, 10),
                p.snomed,
                sensitivity=p.sensitivity,
                related=p.icd10,
            )
        )
    if mh:
        for i in range(rng.randint(1, 3)):
            out.append(
                Fact(
                    "score",
                    f"PHQ{i}",
                    _when(rng, person, 2),
                    codes.PHQ9,
                    value=float(rng.randint(0, 27)),
                    related=codes.PHQ9_LOINC,
                    unit="{score}",
                    status="final",
                    sensitivity="PSY",
                )
            )
    else:
        code, alt, unit, lo, hi = codes.VITALS[0]
        out.append(
            Fact(
                "score",
                "WT0",
                _when(rng, person, 1),
                code,
                value=round(rng.uniform(lo, hi), 1),
                unit=unit,
                related=alt,
                status="final",
            )
        )
    return out


def _social(
    rng: random.Random, person: Person, problems: list[codes.Problem], seed: int
) -> list[Fact]:
    """Council social care: assessments, services in place, alerts, carers."""
    out: list[Fact] = []
    start = _when(rng, person, 5)
    kind = "childrens" if person.age < 18 else "care-act"
    out.append(Fact("assessment", "AS0", start, None, text=kind, status="completed"))
    if person.age >= 18:
        service = rng.choice(("home-care", "day-centre", "meals", "telecare", "residential"))
        out.append(
            Fact(
                "service",
                "SV0",
                start + timedelta(days=21),
                None,
                text=service,
                value=float(rng.choice((3, 7, 10, 14, 21))),
                unit="hours/week",
            )
        )
    if rng.random() < 0.12:
        out.append(
            Fact(
                "alert",
                "AL0",
                _when(rng, person, 3),
                None,
                text="safeguarding" if person.age >= 18 else "child-protection",
                sensitivity="SDV",
            )
        )
    if rng.random() < 0.4:
        out.append(
            Fact(
                "carer",
                "CR0",
                start,
                None,
                text=rng.choice(("spouse", "daughter", "son", "friend")),
            )
        )
    return out
