"""A deterministic synthetic population shaped like an English ICS.

``people(seed, size)`` yields people one at a time (so 1,000,000 stream to
disk in bounded memory); ``facts(seed, person, source)`` gives the clinical
and care content one source holds about one person. Both are pure functions
of their arguments: the same seed always gives the same population, and a
simulator can regenerate any person's record on demand.

Proportions (stated so a reader can check them against reality):

- age: 0-17 19%, 18-39 25%, 40-64 32%, 65-79 16%, 80+ 8% (an ICS a little
  older than England's 19% aged 65+)
- GP: everyone is registered with one practice (~8,000 patients a practice)
- acute hospital: 35% of under-40s, 50% of 40-64s, 70% of 65-79s, 85% of 80+
  have a record (admissions, A&E, outpatient results)
- community and mental health trust: 8% of under-65s, 25% of 65-79s, 45% of
  80+, plus everyone with a serious mental illness or substance misuse
- council social care: 2% of under-18s (children's services), 3% of 18-64s,
  12% of 65-79s, 35% of 80+
- of social care records, 20% lack the NHS number, and those carry variant
  demographics (misspelt or swapped names, an old address), so they can only
  be matched on demographics.

NHS numbers come from the reserved test range 999 000 0000 - 999 999 9999,
each with a valid modulus-11 check digit. That range holds 909,091 valid
numbers, which bounds the population size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from carelink.fhir.nhs import check_digit
from carelink.simulators import codes
from carelink.simulators.names import FAMILY, GIVEN_FEMALE, GIVEN_MALE, STREETS, TOWNS

SOURCES = ("gp", "acute", "community", "social-care")

#: The day the synthetic world is "now"; fixed so output depends only on the seed.
REFERENCE_DATE = date(2026, 11, 1)

_BASE = 999_000_000
_SPAN = 1_000_000
_STRIDE = 738_923  # coprime with 10**6: j -> (j*stride + offset) mod 10**6 is a permutation
_POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the inward-code letters Royal Mail uses


def capacity() -> int:
    """How many valid NHS numbers the reserved test range holds."""
    return sum(1 for j in range(_SPAN) if check_digit(str(_BASE + j)) is not None)


MAX_SIZE = 909_091


@dataclass(frozen=True)
class Person:
    """One member of the synthetic population, as their GP knows them."""

    index: int
    nhs_number: str
    given: str
    middle: str | None
    family: str
    gender: str  # FHIR administrative gender: male | female
    birth_date: date
    address_line: str
    town: str
    postcode: str
    phone: str
    gp_ods: str
    sources: frozenset[str] = field(default_factory=frozenset)
    #: social care only: None, or how that record's demographics differ
    social_variant: str | None = None

    @property
    def age(self) -> int:
        """Age in whole years on the reference date."""
        b = self.birth_date
        r = REFERENCE_DATE
        return r.year - b.year - ((r.month, r.day) < (b.month, b.day))


def local_id(source: str, index: int) -> str:
    """The identifier ``source`` uses for person ``index`` (distinct per source)."""
    prefix, mult, offset = {
        "gp": ("G", 48_271, 1_234_567),
        "acute": ("RX", 16_807, 7_654_321),
        "community": ("C", 69_621, 3_141_592),
        "social-care": ("SC", 40_692, 2_718_281),
    }[source]
    return f"{prefix}{(index * mult + offset) % 100_000_000:08d}"


def practice_code(number: int) -> str:
    """An ODS-style GP practice code (letter + five digits)."""
    return f"B{86000 + number:05d}"


def practice_count(size: int) -> int:
    """Practices for a population: one per ~8,000 people, at least three."""
    return max(3, size // 8000)


def _nhs_numbers(seed: int) -> Iterator[str]:
    offset = (seed * 104_729) % _SPAN
    for j in range(_SPAN):
        first_nine = str(_BASE + (j * _STRIDE + offset) % _SPAN)
        digit = check_digit(first_nine)
        if digit is not None:
            yield first_nine + str(digit)


def _age(rng: random.Random) -> int:
    band = rng.random()
    if band < 0.19:
        return rng.randint(0, 17)
    if band < 0.44:
        return rng.randint(18, 39)
    if band < 0.76:
        return rng.randint(40, 64)
    if band < 0.92:
        return rng.randint(65, 79)
    return min(104, 80 + int(rng.expovariate(1 / 7)))


def _postcode(rng: random.Random, area: str, district: int) -> str:
    letters = rng.choice(_POSTCODE_LETTERS) + rng.choice(_POSTCODE_LETTERS)
    return f"{area}{district} {rng.randint(1, 9)}{letters}"


def _membership(rng: random.Random, age: int) -> set[str]:
    out = {"gp"}
    acute = 0.35 if age < 40 else 0.5 if age < 65 else 0.7 if age < 80 else 0.85
    community = 0.08 if age < 65 else 0.25 if age < 80 else 0.45
    social = 0.02 if age < 18 else 0.03 if age < 65 else 0.12 if age < 80 else 0.35
    for name, p in (("acute", acute), ("community", community), ("social-care", social)):
        if rng.random() < p:
            out.add(name)
    return out


def make_person(seed: int, index: int, nhs_number: str, practices: int) -> Person:
    """Person ``index`` of the population generated from ``seed``."""
    rng = random.Random(f"{seed}:{index}:person")
    gender = rng.choice(("male", "female"))
    names = GIVEN_MALE if gender == "male" else GIVEN_FEMALE
    age = _age(rng)
    birth = REFERENCE_DATE - timedelta(days=age * 365 + rng.randint(0, 364))
    town, area, districts = rng.choice(TOWNS)
    district = rng.randint(1, districts)
    sources = _membership(rng, age)
    if any(
        p.sensitivity == "ETH" or p.snomed.code == "58214004" for p in _problems(seed, index, age)
    ):
        sources.add("community")
    variant = None
    if "social-care" in sources and rng.random() < 0.2:
        variant = rng.choice(("misspelt", "swapped", "old-address", "nickname"))
    return Person(
        index=index,
        nhs_number=nhs_number,
        given=rng.choice(names),
        middle=rng.choice(names) if rng.random() < 0.4 else None,
        family=rng.choice(FAMILY),
        gender=gender,
        birth_date=birth,
        address_line=f"{rng.randint(1, 240)} {rng.choice(STREETS)}",
        town=town,
        postcode=_postcode(rng, area, district),
        phone=f"07700 9{rng.randint(0, 99999):05d}",  # Ofcom's drama range
        gp_ods=practice_code(rng.randrange(max(1, practices))),
        sources=frozenset(sources),
        social_variant=variant,
    )


def people(seed: int, size: int) -> Iterator[Person]:
    """Yield ``size`` people deterministically from ``seed``, one at a time."""
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(
            f"population size must be 1..{MAX_SIZE:,} (the valid NHS numbers in the "
            f"reserved test range 999 000 0000 - 999 999 9999), got {size:,}"
        )
    practices = practice_count(size)
    for index, number in enumerate(_nhs_numbers(seed)):
        if index >= size:
            return
        yield make_person(seed, index, number, practices)


# --- clinical and care content --------------------------------------------------------


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


def _problems(seed: int, index: int, age: int) -> list[codes.Problem]:
    rng = random.Random(f"{seed}:{index}:problems")
    out = []
    for p in codes.PROBLEMS:
        gradient = 1.0 if p.sensitivity else min(2.5, max(0.3, age / 45))
        if age >= p.min_age and rng.random() < p.prevalence * gradient:
            out.append(p)
    return out


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
    problems = _problems(seed, person.index, person.age)
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
                    unit=str(round(sys_ * 0.62 + rng.gauss(0, 6))),
                    encounter=enc,
                    status="final",
                )
            )
        code, unit, lo, hi = rng.choice(codes.VITALS)
        out.append(
            Fact(
                "vital",
                f"V{i}",
                when,
                code,
                value=round(rng.uniform(lo, hi), 1),
                unit=unit,
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
                    codes.loinc(
                        "44261-6",
                        "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
                    ),
                    value=float(rng.randint(0, 27)),
                    unit="{score}",
                    status="final",
                    sensitivity="PSY",
                )
            )
    else:
        code, unit, lo, hi = codes.VITALS[0]
        out.append(
            Fact(
                "score",
                "WT0",
                _when(rng, person, 1),
                code,
                value=round(rng.uniform(lo, hi), 1),
                unit=unit,
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


def social_demographics(person: Person) -> dict[str, str | None]:
    """The demographics the council holds: the GP's, or a variant for unmatched records.

    Returns given, family, birth_date (ISO), postcode, address_line and
    nhs_number (None when the council never recorded it).
    """
    from carelink.simulators.names import NICKNAMES

    out: dict[str, str | None] = {
        "given": person.given,
        "family": person.family,
        "birth_date": person.birth_date.isoformat(),
        "postcode": person.postcode,
        "address_line": person.address_line,
        "nhs_number": person.nhs_number,
    }
    variant = person.social_variant
    if variant is None:
        return out
    out["nhs_number"] = None
    rng = random.Random(f"{person.index}:social-variant")
    if variant == "misspelt":
        family = person.family
        i = rng.randrange(1, len(family)) if len(family) > 2 else 1
        out["family"] = (
            family[:i] + family[i + 1 :]
            if rng.random() < 0.5
            else (family[:i] + family[i - 1] + family[i:])
        )
    elif variant == "swapped":
        out["given"], out["family"] = person.family, person.given
    elif variant == "old-address":
        out["postcode"] = person.postcode[:-2] + ("AB" if person.postcode[-2:] != "AB" else "BD")
        out["address_line"] = f"{rng.randint(1, 240)} Old Mill Yard"
    else:  # nickname
        out["given"] = NICKNAMES.get(person.given, person.given[:3])
    return out
