"""Demographic matching for records that arrive without an NHS number.

A Fellegi-Sunter score: each field is compared at a level (exact, close,
different, missing) and contributes log2(m/u) bits, where m is how often the
level occurs between records of the same person and u how often between
different people. The m/u values below are fixed, stated estimates for an
English population (u of an exact birth-date match ~1/25,000, of an exact
postcode ~1/2,000), so every score can be explained field by field.

Records scoring at or above ``MATCH_THRESHOLD`` bits are linked; those
between ``REVIEW_THRESHOLD`` and it go to a review list for a person to
decide; below it they stay unlinked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import jellyfish

from carelink.fhir.search import fold

MATCH_THRESHOLD = 18.0
REVIEW_THRESHOLD = 9.0

# (m, u) per field and level
_LEVELS: dict[str, dict[str, tuple[float, float]]] = {
    "birth_date": {
        "exact": (0.96, 1 / 25_000),
        "close": (0.03, 1 / 2_500),
        "different": (0.01, 0.999),
    },
    "family": {"exact": (0.88, 0.01), "close": (0.07, 0.003), "different": (0.05, 0.987)},
    "given": {"exact": (0.80, 0.02), "close": (0.14, 0.01), "different": (0.06, 0.97)},
    "swapped": {"exact": (0.03, 0.0001)},
    "postcode": {"exact": (0.80, 1 / 2_000), "close": (0.08, 1 / 200), "different": (0.12, 0.995)},
    "gender": {"exact": (0.98, 0.5), "different": (0.02, 0.5)},
}


@dataclass(frozen=True)
class Demographics:
    """What matching compares."""

    given: str
    family: str
    birth_date: str | None
    gender: str | None
    postcode: str | None


@dataclass(frozen=True)
class FieldScore:
    """One field's contribution to a score."""

    field: str
    level: str
    weight: float


@dataclass(frozen=True)
class MatchScore:
    """A total score in bits and how it was made."""

    total: float
    fields: tuple[FieldScore, ...]

    def explain(self) -> str:
        """``family=exact(+6.5) given=close(+3.8) ...`` for a reviewer."""
        parts = [f"{f.field}={f.level}({f.weight:+.1f})" for f in self.fields]
        return f"{self.total:.1f} bits: " + " ".join(parts)


def _weight(field: str, level: str) -> float:
    m, u = _LEVELS[field][level]
    return math.log2(m / u)


def _names_close(a: str, b: str) -> bool:
    if not a or not b:
        return False
    return a.startswith(b) or b.startswith(a) or jellyfish.jaro_winkler_similarity(a, b) >= 0.88


def _date_close(a: str, b: str) -> bool:
    if len(a) != 10 or len(b) != 10:
        return False
    ya, ma, da = a[:4], a[5:7], a[8:10]
    yb, mb, db = b[:4], b[5:7], b[8:10]
    if ya == yb and ma == db and da == mb:
        return True  # day and month transposed
    differing = sum(x != y for x, y in zip(a, b, strict=True))
    return differing == 1


def _postcode_level(a: str, b: str) -> str:
    a, b = a.replace(" ", "").upper(), b.replace(" ", "").upper()
    if a == b:
        return "exact"
    if a[:-2] == b[:-2]:
        return "close"  # same sector
    return "different"


def score(a: Demographics, b: Demographics) -> MatchScore:
    """Compare two people's demographics field by field."""
    out: list[FieldScore] = []
    fam_a, fam_b = fold(a.family), fold(b.family)
    giv_a, giv_b = fold(a.given).split(" ")[0], fold(b.given).split(" ")[0]
    if fam_a == giv_b and giv_a == fam_b and fam_a != giv_a:
        out.append(FieldScore("names", "swapped", _weight("swapped", "exact")))
    else:
        for field, x, y in (("family", fam_a, fam_b), ("given", giv_a, giv_b)):
            level = "exact" if x == y else "close" if _names_close(x, y) else "different"
            out.append(FieldScore(field, level, _weight(field, level)))
    if a.birth_date and b.birth_date:
        level = (
            "exact"
            if a.birth_date == b.birth_date
            else "close"
            if _date_close(a.birth_date, b.birth_date)
            else "different"
        )
        out.append(FieldScore("birth_date", level, _weight("birth_date", level)))
    if a.postcode and b.postcode:
        level = _postcode_level(a.postcode, b.postcode)
        out.append(FieldScore("postcode", level, _weight("postcode", level)))
    if a.gender and b.gender and "unknown" not in (a.gender, b.gender):
        level = "exact" if a.gender == b.gender else "different"
        out.append(FieldScore("gender", level, _weight("gender", level)))
    return MatchScore(round(sum(f.weight for f in out), 2), tuple(out))


#: A block holding more records than this is not used to find candidates (its records
#: still meet their candidates through their other keys); see ``blocking_keys``.
BLOCK_CAP = 200


def _date_key(birth_date: str) -> str:
    """The birth date with day and month in either order: a transposition keeps the key."""
    if len(birth_date) != 10:
        return birth_date
    month, day = birth_date[5:7], birth_date[8:10]
    return birth_date[:4] + ":" + min(month, day) + max(month, day)


def _sound(name: str) -> str:
    return jellyfish.soundex(name) if name else ""


def blocking_keys(d: Demographics) -> Iterable[str]:
    """Keys under which candidates are looked for (a pair must share one to be compared).

    Every key joins two or more fields, so a block holds the handful of people
    alike in all of them however large the population grows (candidates per
    record stay roughly constant), and each kind of error a second system makes
    leaves at least one key intact:

    - ``fd``: surname sound-alike + birth date (day and month either way round):
      survives a given-name typo or nickname, a move, a transposed date;
    - ``gd``: given-name initial + birth date: survives a changed or misspelt surname;
    - ``pd``: postcode + birth date: survives changes to both names;
    - ``nd``: both names' sound-alikes in either order + birth date: swapped names;
    - ``fp``: surname sound-alike + given initial + postcode: a wrong birth date;
    - ``fy``: both names' sound-alikes + birth year and month: a wrong birth day after
      a move.

    The fallback ``ds`` (birth date + sex) is used only by a record that has no name
    to block on. Blocks larger than ``BLOCK_CAP`` are skipped by the linker.
    """
    family = fold(d.family)
    given = fold(d.given).split(" ")[0]
    fam, giv = _sound(family), _sound(given)
    initial = given[:1]
    postcode = d.postcode.replace(" ", "").upper() if d.postcode else ""
    if d.birth_date:
        day = _date_key(d.birth_date)
        if fam:
            yield f"fd:{fam}:{day}"
        if initial:
            yield f"gd:{initial}:{day}"
        if postcode:
            yield f"pd:{postcode}:{day}"
        if fam and giv:
            yield f"nd:{min(fam, giv)}:{max(fam, giv)}:{day}"
            yield f"fy:{fam}:{giv}:{d.birth_date[:7]}"
        if not (fam and giv):
            yield f"ds:{day}:{d.gender or ''}"
    elif fam and giv:
        yield f"fg:{fam}:{giv}"
    if fam and initial and postcode:
        yield f"fp:{fam}:{initial}:{postcode}"


def lookup_values(d: Demographics) -> tuple[str, str, str]:
    """(day, names and year-month, postcode): two records sharing a blocking key share
    one of these non-empty values (every key but ``fy``, ``fg`` and ``fp`` holds the
    day; those hold the names and year-month, or the postcode). So the index finds a
    record's possible block neighbours by three indexed equalities ("" for none)."""
    family = fold(d.family)
    given = fold(d.given).split(" ")[0]
    fam, giv = _sound(family), _sound(given)
    day = _date_key(d.birth_date) if d.birth_date else ""
    names = f"{fam}:{giv}:{(d.birth_date or '')[:7]}" if fam and giv else ""
    postcode = d.postcode.replace(" ", "").upper() if d.postcode else ""
    return day, names, postcode if fam and given[:1] else ""


#: which of ``lookup_values`` (day, names and year-month, postcode) each kind of blocking
#: key holds
_HELD_IN = {"fd": 0, "gd": 0, "pd": 0, "nd": 0, "ds": 0, "fy": 1, "fg": 1, "fp": 2}


def key_value(key: str, values: tuple[str, str, str]) -> str:
    """The lookup value that every record holding blocking ``key`` holds (``values``: one
    holder's ``lookup_values``), tagged as ``IndexStore.near_any`` takes it: a block is
    never larger than the records sharing that value."""
    i = _HELD_IN[key[:2]]
    return "dnp"[i] + values[i]


def best_match(
    record: Demographics, candidates: Iterable[tuple[str, Demographics]]
) -> tuple[str | None, MatchScore | None]:
    """The highest-scoring candidate id and its score."""
    best_id: str | None = None
    best: MatchScore | None = None
    for cid, cand in candidates:
        s = score(record, cand)
        if best is None or s.total > best.total:
            best_id, best = cid, s
    return best_id, best
