"""A deterministic synthetic population shaped like an English ICS.

``people(seed, size)`` yields people one at a time (so a million stream to
disk in bounded memory); ``clinical.facts(seed, person, source)`` gives the clinical
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
from datetime import date, timedelta

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
        p.sensitivity == "ETH" or p.snomed.code == "58214004"
        for p in codes.problems_for(seed, index, age)
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
    check_size(size)
    practices = practice_count(size)
    for index, number in enumerate(_nhs_numbers(seed)):
        if index >= size:
            return
        yield make_person(seed, index, number, practices)


def check_size(size: int) -> None:
    """Refuse a population the reserved NHS number range cannot hold."""
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(
            f"population size must be 1..{MAX_SIZE:,} (the valid NHS numbers in the "
            f"reserved test range 999 000 0000 - 999 999 9999), got {size:,}"
        )


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
