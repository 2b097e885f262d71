"""Disclosure control: k-anonymity, l-diversity, re-identification risk, small numbers.

Works on one row per person (a pandas DataFrame) with configured
quasi-identifier columns. ``protect`` generalises step by step along each
quasi-identifier's hierarchy (exact age → 5-year band → 10-year band → 20;
postcode sector → district → area) and then suppresses the people still in
classes smaller than k; if that would suppress more than allowed, or
l-diversity of the sensitive column still fails, the extract is refused.

Risk (records in equivalence classes of the released quasi-identifiers):

- prosecutor risk: the attacker knows the person is in the extract:
  the highest risk is 1 / the smallest class; the average is classes / records;
- journalist risk: the attacker does not know; with the population the
  extract was drawn from, 1 / the smallest matching population class
  (without a population table it equals prosecutor risk, an upper bound);
- marketer risk: the expected share of records re-identified when matching
  everyone: classes / records.

Aggregate tables below national level follow NHS England's rule: 0 stays 0,
1 to 7 becomes ``*``, anything else is rounded to the nearest 5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is loaded by the functions that use it: a gateway worker that
    # never runs an extract does not pay its import (~0.35 s) or its memory
    import pandas as pd

from carelink.errors import ExportError

Generaliser = Callable[[Any, int], Any]


def age_band(age: Any, level: int) -> Any:
    """Level 0: the age; 1: 5-year bands; 2: 10-year; 3: 20-year; 4: 90+ / under 90."""
    import pandas as pd

    if age is None or pd.isna(age):
        return None
    a = int(age)
    if a >= 90:
        return "90+"
    width = (1, 5, 10, 20, 90)[min(level, 4)]
    if width == 1:
        return a
    lo = a // width * width
    return f"{lo}-{lo + width - 1}"


def postcode_level(postcode: Any, level: int) -> Any:
    """UK postcode: level 0 sector (``LS1 4``), 1 district (``LS1``), 2 area (``LS``), 3 none."""
    import pandas as pd

    if postcode is None or pd.isna(postcode):
        return None
    text = str(postcode).upper().replace(" ", "")
    if len(text) < 5:
        return None
    outward, inward = text[:-3], text[-3:]
    if level <= 0:
        return f"{outward} {inward[0]}"
    if level == 1:
        return outward
    if level == 2:
        return "".join(c for c in outward if c.isalpha())[:2]
    return None


def keep_level(value: Any, level: int) -> Any:
    """A quasi-identifier with no hierarchy: kept, then suppressed at level 1."""
    return value if level == 0 else None


HIERARCHIES: dict[str, tuple[Generaliser, int]] = {
    "age": (age_band, 4),
    "postcode": (postcode_level, 3),
}


class Refused(ExportError):
    """An extract that cannot meet its thresholds: refused, not shipped."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class Thresholds:
    """What the extract must meet."""

    k: int = 5
    l_diversity: int = 1
    sensitive: str | None = None
    max_suppressed: float = 0.05


@dataclass
class Report:
    """What was done and what risk remains."""

    records_in: int
    records_out: int
    suppressed: int
    k: int
    smallest_class: int
    classes: int
    levels: dict[str, int]
    prosecutor_max: float
    prosecutor_avg: float
    journalist_max: float
    marketer: float
    l_smallest: int | None
    met: bool
    reasons: list[str] = field(default_factory=list)
    #: the released facts (anonymised extracts): k^m-anonymity and what it cost
    facts: dict[str, Any] | None = None
    #: the intruder attack run on the release itself
    intruder: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, for the analyst.

        Disclosure control that cannot be differenced: what is released is
        counted exactly (it is in the files anyway); what is *not* released
        (people suppressed) is published once, under the small-number rule,
        and never beside a total that includes it (``records_in`` is not
        published: with the exact ``records_out`` it would give the suppressed
        count back).
        """
        out = {k: v for k, v in self.__dict__.items() if k != "records_in"}
        out["suppressed"] = small_numbers(self.suppressed)
        out["reasons"] = list(self.reasons)
        if self.facts is None:
            out.pop("facts")
        if self.intruder is None:
            out.pop("intruder")
        return out

    def summary(self) -> str:
        """A short readable account (what was not released under the small-number rule)."""
        lines = [
            f"{self.records_out} people released ({small_numbers(self.suppressed)} "
            f"suppressed); {self.classes} equivalence classes, smallest {self.smallest_class} "
            f"(k required {self.k}).",
            "Generalisation: "
            + ", ".join(f"{q} level {lvl}" for q, lvl in self.levels.items())
            + ".",
            f"Risk: prosecutor max {self.prosecutor_max:.3f} (average "
            f"{self.prosecutor_avg:.3f}), journalist max {self.journalist_max:.3f}, "
            f"marketer {self.marketer:.3f}.",
        ]
        if self.l_smallest is not None:
            lines.append(f"l-diversity: smallest class has {self.l_smallest} distinct values.")
        if self.facts is not None:
            lines.append(
                f"Facts: k^m-anonymity with m = {self.facts['m']}: "
                f"{self.facts['released']} facts released, "
                f"{self.facts['retainedShare']:.0%} of those considered."
            )
        if self.intruder is not None:
            lines.append(
                f"Intruder ({self.intruder['knows']}): re-identified "
                f"{self.intruder['reidentifiedByRarestFacts']} (rarest facts) and "
                f"{self.intruder['reidentifiedByRandomFacts']} (random facts) of "
                f"{self.intruder['releasedPeople']}; rate {self.intruder['rate']:.4f}."
            )
        lines.append("Thresholds met." if self.met else "REFUSED: " + "; ".join(self.reasons))
        return "\n".join(lines)


def _generalised(df: pd.DataFrame, raw: pd.DataFrame, levels: dict[str, int]) -> pd.DataFrame:
    out = df.copy()
    for q, lvl in levels.items():
        fn = HIERARCHIES.get(q, (keep_level, 1))[0]
        out[q] = [fn(v, lvl) for v in raw[q]]
    return out


def _class_sizes(df: pd.DataFrame, qis: Sequence[str]) -> pd.Series:
    return df.groupby(list(qis), dropna=False)[qis[0]].transform("size")


def protect(
    people: pd.DataFrame,
    qis: Sequence[str],
    thresholds: Thresholds,
    population: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, Report]:
    """Generalise and suppress until k (and l) hold; the released table and its report.

    Raises ``ExportError`` (with the report attached) when the thresholds
    cannot be met within the allowed suppression.
    """
    import pandas as pd

    if not qis:
        raise ExportError("disclosure control needs at least one quasi-identifier")
    raw = people.reset_index(drop=True)
    levels = dict.fromkeys(qis, 0)
    n = len(raw)
    current = _generalised(raw, raw, levels)
    while True:
        sizes = _class_sizes(current, qis) if n else pd.Series(dtype=int)
        small = int((sizes < thresholds.k).sum()) if n else 0
        if n == 0 or small <= thresholds.max_suppressed * n:
            break
        # Generalise the quasi-identifier with the most distinct values that can still go up.
        movable = [q for q in qis if levels[q] < HIERARCHIES.get(q, (keep_level, 1))[1]]
        if not movable:
            break
        q = max(movable, key=lambda c: current[c].nunique(dropna=False))
        levels[q] += 1
        current = _generalised(raw, raw, levels)
    sizes = _class_sizes(current, qis) if n else pd.Series(dtype=int)
    released = current[sizes >= thresholds.k] if n else current
    suppressed = n - len(released)
    report = _report(released, n, suppressed, qis, thresholds, levels, population)
    if not report.met:
        raise Refused(report)
    return released.reset_index(drop=True), report


def recheck(
    released: pd.DataFrame,
    qis: Sequence[str],
    thresholds: Thresholds,
    levels: dict[str, int],
    suppressed: int,
) -> Report:
    """The report for the records actually released, at the levels ``protect`` chose.

    When fewer records are released than ``protect`` planned for (consent
    withheld some), classes can shrink below k: ``Refused`` if they do. The
    records consent withheld are not counted as suppressed, nor as records in
    (their number is not the analyst's to learn); ``suppressed`` is what
    ``protect`` suppressed.
    """
    raw = released.reset_index(drop=True)
    current = _generalised(raw, raw, levels)
    report = _report(current, len(current) + suppressed, suppressed, qis, thresholds, levels, None)
    if not report.met:
        raise Refused(report)
    return report


def _report(
    released: pd.DataFrame,
    n: int,
    suppressed: int,
    qis: Sequence[str],
    t: Thresholds,
    levels: dict[str, int],
    population: pd.DataFrame | None,
) -> Report:
    reasons = []
    if n and suppressed > t.max_suppressed * n:
        reasons.append(
            f"more than {t.max_suppressed:.0%} of the people would be suppressed to reach "
            f"k = {t.k}: the cohort cannot be released at record level, only as aggregate "
            "tables under the small-number rule (profile=aggregate)"
        )
    if len(released):
        groups = released.groupby(list(qis), dropna=False)
        sizes = groups.size()
        smallest = int(sizes.min())
        classes = len(sizes)
        prosecutor_max = 1.0 / smallest
        prosecutor_avg = classes / len(released)
        journalist_max = prosecutor_max
        if population is not None and len(population):
            pop = _generalised(
                population.reset_index(drop=True), population.reset_index(drop=True), levels
            )
            pop_sizes = pop.groupby(list(qis), dropna=False).size()
            matched = [int(pop_sizes.get(key, 0)) for key in sizes.index]
            journalist_max = 1.0 / max(1, min(m for m in matched if m) if any(matched) else 1)
        l_smallest = None
        if t.sensitive:
            l_smallest = int(groups[t.sensitive].nunique(dropna=False).min())
            if l_smallest < t.l_diversity:
                reasons.append(
                    f"l-diversity {t.l_diversity} not met (a class has {l_smallest} distinct "
                    f"{t.sensitive} values)"
                )
        if smallest < t.k:
            reasons.append(f"smallest class {smallest} is below k = {t.k}")
    else:
        smallest, classes, prosecutor_max, prosecutor_avg, journalist_max = 0, 0, 0.0, 0.0, 0.0
        l_smallest = None
        if n:
            reasons.append("every record would be suppressed")
    return Report(
        records_in=n,
        records_out=len(released),
        suppressed=suppressed,
        k=t.k,
        smallest_class=smallest,
        classes=classes,
        levels=dict(levels),
        prosecutor_max=prosecutor_max,
        prosecutor_avg=prosecutor_avg,
        journalist_max=journalist_max,
        marketer=prosecutor_avg,
        l_smallest=l_smallest,
        met=not reasons,
        reasons=reasons,
    )


def small_numbers(count: int) -> str:
    """NHS England's rule below national level: 0 → 0, 1 to 7 → ``*``, else nearest 5."""
    if count < 0:
        raise ValueError("a count cannot be negative")
    if count == 0:
        return "0"
    if count <= 7:
        return "*"
    return str(int(5 * round(count / 5)))


def suppress_table(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """An aggregate table with its count columns made safe to publish."""
    out = table.copy()
    for c in columns:
        out[c] = [small_numbers(int(v)) for v in out[c]]
    return out
