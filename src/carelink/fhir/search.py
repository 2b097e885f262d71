"""FHIR search-parameter parsing and matching on plain dicts.

Covers what the gateway states in its CapabilityStatement: token
(``system|code``, ``|code``, ``system|``, ``code``), date with the R4
prefixes (eq ne lt gt le ge sa eb ap) at the precision given, and string
(case- and accent-insensitive "starts with", as FHIR's default string search).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from carelink.errors import InvalidRequest

Json = dict[str, Any]

_DATE_RE = re.compile(
    r"^(?P<prefix>eq|ne|lt|gt|le|ge|sa|eb|ap)?"
    r"(?P<value>\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)


@dataclass(frozen=True)
class Token:
    """A parsed token search value; ``None`` means "any"."""

    system: str | None
    code: str | None

    def matches_coding(self, coding: Json) -> bool:
        """True when one Coding (or Identifier: system/value) matches."""
        code = coding.get("code", coding.get("value"))
        if self.code is not None and code != self.code:
            return False
        if self.system is None:
            return True
        if self.system == "":
            return "system" not in coding
        return bool(coding.get("system") == self.system)


def parse_token(value: str, parameter: str) -> Token:
    """Parse one alternative ``system|code``; an empty value is an error naming
    ``parameter``. FHIR R4's escapes are read: ``\\|`` is a bar inside the system
    or the code, not between them, and ``\\, \\$ \\\\`` stand for themselves."""
    if value == "":
        raise InvalidRequest(f"Parameter '{parameter}' has an empty value", parameter)
    bar = _separator(value, "|")
    if bar < 0:
        return Token(None, unescaped(value))
    system, code = unescaped(value[:bar]), unescaped(value[bar + 1 :])
    return Token(system, code or None)


def token_matches(value: str, parameter: str, concept: Any) -> bool:
    """Match a comma-separated list of tokens (OR) against a CodeableConcept/Coding/list."""
    tokens = [parse_token(v, parameter) for v in alternatives(value)]
    codings = list(_codings(concept))
    return any(t.matches_coding(c) for t in tokens for c in codings)


def _codings(concept: Any) -> list[Json]:
    if concept is None:
        return []
    if isinstance(concept, list):
        return [c for item in concept for c in _codings(item)]
    if "coding" in concept:
        return list(concept["coding"])
    return [concept]


@dataclass(frozen=True)
class DateRange:
    """A half-open instant range [start, end) in UTC."""

    start: datetime
    end: datetime


#: the end of time as this module's ranges hold it (a range ending at or past the last
#: instant Python can hold ends here)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


def _to_range(text: str) -> DateRange:
    """The implicit range a FHIR date/dateTime string covers at its precision (the
    last such range, in 9999, ends at the end of time instead of past it)."""
    if len(text) == 4:
        start = datetime(int(text), 1, 1, tzinfo=UTC)
        return DateRange(start, _after(start, months=12))
    if len(text) == 7:
        y, m = int(text[:4]), int(text[5:7])
        start = datetime(y, m, 1, tzinfo=UTC)
        return DateRange(start, _after(start, months=1))
    if len(text) == 10:
        d = date.fromisoformat(text)
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return DateRange(start, _after(start, timedelta(days=1)))
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    step = timedelta(seconds=1) if len(text) > 16 else timedelta(minutes=1)
    return DateRange(value, _after(value, step))


def _after(start: datetime, step: timedelta = timedelta(0), months: int = 0) -> datetime:
    """``start`` moved on by ``step`` or by whole ``months``; the end of time when that
    would be past the last instant a ``datetime`` holds (year 9999's last range)."""
    try:
        if months:
            n = start.month - 1 + months
            return start.replace(year=start.year + n // 12, month=n % 12 + 1)
        return start + step
    except (OverflowError, ValueError):
        return _END_OF_TIME


@dataclass(frozen=True)
class DateQuery:
    """A parsed ``date`` search value: prefix and the range it names."""

    prefix: str
    range: DateRange

    def matches(self, target: DateRange, now: datetime | None = None) -> bool:
        """Apply the R4 prefix semantics of a search value to a target range
        (``now``, by default the clock's, anchors ``ap``)."""
        q, t = self.range, target
        match self.prefix:
            case "eq":
                return t.start >= q.start and t.end <= q.end
            case "ne":
                return not (t.start >= q.start and t.end <= q.end)
            case "gt":
                return t.end > q.end
            case "lt":
                return t.start < q.start
            case "ge":
                return t.end > q.start
            case "le":
                return t.start < q.end
            case "sa":
                return t.start >= q.end
            case "eb":
                return t.end <= q.start
            case _:  # "ap": within 10% of the gap to now, at least a day
                now = now or datetime.now(UTC)
                slack = max(abs(now - q.start) * 0.1, timedelta(days=1))
                return t.end > q.start - slack and t.start < q.end + slack


def parse_date(value: str, parameter: str) -> DateQuery:
    """Parse ``[prefix]YYYY[-MM[-DD[Thh:mm[:ss][tz]]]]``; errors name ``parameter``."""
    m = _DATE_RE.match(value)
    if m is None:
        raise InvalidRequest(
            f"Parameter '{parameter}' value '{value}' is not a FHIR date "
            "(expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss][tz]]]])",
            parameter,
        )
    try:
        rng = _to_range(m.group("value"))
    except ValueError as exc:
        raise InvalidRequest(f"Parameter '{parameter}': {exc}", parameter) from exc
    return DateQuery(m.group("prefix") or "eq", rng)


def target_range(value: Any) -> DateRange | None:
    """The range of a resource's date element (date, dateTime, instant or Period)."""
    if value is None:
        return None
    try:
        if isinstance(value, dict):
            start = value.get("start")
            end = value.get("end")
            lo = _to_range(start).start if start else datetime.min.replace(tzinfo=UTC)
            hi = _to_range(end).end if end else _END_OF_TIME
            return DateRange(lo, hi)
        return _to_range(str(value))
    except ValueError:
        return None


_ESCAPED = re.compile(r"\\([\\,$|])")


def _separator(value: str, char: str) -> int:
    """Where the first ``char`` not escaped by a backslash is in ``value``; -1 if none."""
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2  # the escaped character is never a separator
            continue
        if value[i] == char:
            return i
        i += 1
    return -1


def alternatives(value: str) -> list[str]:
    """A search value's comma-separated alternatives (OR), split as FHIR R4 escapes
    them: ``\\,`` is a comma inside an alternative, not between two. Each comes back
    as sent (``unescaped`` reads a string's). ``"a\\,b,c"`` -> ``["a\\,b", "c"]``."""
    if "\\" not in value:  # nothing escaped (nearly every value): every comma separates
        return value.split(",")
    parts = []
    while (i := _separator(value, ",")) >= 0:
        parts.append(value[:i])
        value = value[i + 1 :]
    parts.append(value)
    return parts


def unescaped(value: str) -> str:
    """A string alternative without FHIR R4's escapes (``\\\\ \\, \\$ \\|``)."""
    return _ESCAPED.sub(r"\1", value) if "\\" in value else value


def fold(text: str) -> str:
    """Case- and accent-insensitive form for FHIR string search.

    ASCII text has no accents and no compatibility forms, and its case folds as
    ``lower`` does: it takes that path (~0.3 us against ~3 us for the walk below; an
    index build folds every record's names several times)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def string_matches(value: str, candidates: list[str]) -> bool:
    """FHIR string search: any candidate starts with ``value``, ignoring case and accents."""
    wanted = fold(value)
    return any(fold(c).startswith(wanted) for c in candidates)


def apply_elements(resource: Json, elements: frozenset[str]) -> Json:
    """Keep only the mandatory elements and the named top-level ones (``_elements``).

    The result is marked SUBSETTED in ``meta.tag`` as R4 requires.
    """
    keep = {"resourceType", "id", "meta"} | elements
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta", {}))
    tags = list(meta.get("tag", []))
    tags.append(
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
            "display": "subsetted",
        }
    )
    meta["tag"] = tags
    out["meta"] = meta
    return out
