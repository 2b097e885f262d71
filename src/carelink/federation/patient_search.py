"""Finding people: FHIR Patient search parameters to index criteria, and the walk over the
matches that pages and counts only what the caller may see.

Minimum criteria. A search names people exactly (``identifier`` or ``_id``),
or gives at least ``family`` and ``birthdate``. That is the rule of NHS
England's Personal Demographics Service FHIR API for a (non-fuzzy) search:
"The minimum search parameters are: family name ...; date of birth - which
can be a range" (PDS FHIR API, *Search for a patient*,
https://digital.nhs.uk/developer/api-catalogue/personal-demographics-service-fhir,
specification/components/paths/patient-search.yaml in
github.com/NHSDigital/personal-demographics-service-api). Below it a query is
refused (400, naming what is missing), so nobody lists the population by
``given=a`` or ``gender=female``; above it every match is returned, however
many (PDS caps at 50; the gateway pages instead, and audits every match).

Totals and consent. The invariant: ``total`` is exactly the number of
persons the caller is shown across all pages, so a person whom consent (or
the caller's scopes) withholds is neither listed nor counted, and
``_summary=count`` reveals nothing more than paging would. The criteria
select candidates in SQL (ordered by id, walked in keyset batches, so all
matches are never held); each batch of candidates is passed through ``shown``
(the consent guard, which reads the batch's consents at once), and only those it
lets through are counted. The minimum
criteria keep the candidate set small enough for that walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar

from carelink.errors import InvalidRequest
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, normalise, problem
from carelink.fhir.search import DateQuery, alternatives, fold, parse_date, parse_token, unescaped
from carelink.sources.base import local_id_system
from carelink.storage import (
    DateTest,
    FoundPerson,
    IdentifierTest,
    IndexStore,
    NameTest,
    PersonQuery,
)

Json = dict[str, Any]
T = TypeVar("T")
DateClause = tuple[DateTest, ...]

#: the Patient search parameters the index answers, and the modifiers each takes
MODIFIERS: dict[str, frozenset[str]] = {
    "_id": frozenset(),
    "identifier": frozenset(),
    "family": frozenset({"exact"}),
    "given": frozenset({"exact"}),
    "birthdate": frozenset({"missing"}),
    "gender": frozenset({"missing"}),
    "address-postalcode": frozenset(),
}
GENDERS = frozenset({"male", "female", "other", "unknown"})
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
#: what a demographic search must give (the PDS FHIR API's minimum, see the module doc)
MINIMUM = ("family", "birthdate")


def patient_params(params: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """The Patient search parameters in a query (names keep their ``:modifier``), and the
    names that are not Patient search parameters (for the caller's lenient/strict rule)."""
    ours: dict[str, list[str]] = {}
    others: list[str] = []
    for name, values in params.items():
        if name.partition(":")[0] in MODIFIERS:
            ours[name] = list(values)
        else:
            others.append(name)
    return ours, others


def patient_query(
    params: Mapping[str, Sequence[str]], sources: Iterable[str], now: datetime
) -> PersonQuery:
    """The index criteria for Patient search parameters (from ``patient_params``).

    Raises ``InvalidRequest`` for an unsupported modifier, a query below the
    minimum criteria, a malformed value or an invalid NHS number. ``sources``
    are the source names whose local-id systems ``identifier`` understands;
    ``now`` anchors ``birthdate=ap…``.
    """
    _check_modifiers(params)
    _check_minimum(params)
    # the local-id systems only an identifier reads: not made for a demographic search
    systems = {local_id_system(s): s for s in sources} if "identifier" in params else {}
    fields: dict[str, list[Any]] = {}
    missing: dict[str, bool] = {}
    for name, values in params.items():
        base, _, modifier = name.partition(":")
        for value in values:
            if modifier == "missing":
                missing[base] = _boolean(value, name)
                continue
            if value == "":
                raise InvalidRequest(f"Parameter '{name}' has an empty value", base)
            fields.setdefault(base, []).append(_alternatives(base, modifier, value, systems, now))
    return PersonQuery(
        ids=tuple(fields.get("_id", ())),
        identifiers=tuple(fields.get("identifier", ())),
        family=tuple(fields.get("family", ())),
        given=tuple(fields.get("given", ())),
        birth_date=tuple(fields.get("birthdate", ())),
        birth_date_missing=missing.get("birthdate"),
        gender=tuple(fields.get("gender", ())),
        gender_missing=missing.get("gender"),
        postcode=tuple(fields.get("address-postalcode", ())),
    )


def _check_modifiers(params: Mapping[str, Sequence[str]]) -> None:
    for name in params:
        base, colon, modifier = name.partition(":")
        if colon and modifier not in MODIFIERS[base]:
            allowed = ", ".join(f":{m}" for m in sorted(MODIFIERS[base])) or "none"
            raise InvalidRequest(
                f"Modifier ':{modifier}' is not supported on '{base}' (supported: {allowed})", name
            )


def _check_minimum(params: Mapping[str, Sequence[str]]) -> None:
    named = {n.partition(":")[0] for n, v in params.items() if v and not n.endswith(":missing")}
    if named & {"identifier", "_id"}:
        return
    lacking = [p for p in MINIMUM if p not in named]
    if lacking:
        raise InvalidRequest(
            "Patient search needs identifier or _id, or at least family and birthdate (the "
            "minimum the NHS PDS FHIR API sets for a demographic search); missing: "
            + ", ".join(lacking),
            lacking[0],
        )


def _boolean(value: str, name: str) -> bool:
    if value not in ("true", "false"):
        raise InvalidRequest(f"Parameter '{name}' must be true or false", name)
    return value == "true"


def _alternatives(
    base: str, modifier: str, value: str, systems: Mapping[str, str], now: datetime
) -> tuple[Any, ...]:
    """One parameter value: its comma-separated alternatives (OR) as index criteria."""
    parts = alternatives(value)
    if any(p == "" for p in parts):
        raise InvalidRequest(f"Parameter '{base}' has an empty alternative", base)
    if base == "_id":
        return tuple(parts)
    if base == "identifier":
        return tuple(t for p in parts for t in identifier_tests(p, systems))
    if base in ("family", "given"):
        exact = modifier == "exact"
        names = [unescaped(p) for p in parts]
        return tuple(NameTest(n, True, fold(n)) if exact else NameTest(fold(n)) for n in names)
    if base == "birthdate":
        return tuple(c for p in parts for c in _birth_date(p, now))
    if base == "gender":
        return tuple(_gender(p) for p in parts)
    return tuple(p.replace(" ", "").upper() for p in parts)  # address-postalcode


def identifier_tests(
    value: str, systems: Mapping[str, str], parameter: str = "identifier"
) -> tuple[IdentifierTest, ...]:
    """What one identifier token matches. ``systems``: local-id system -> source name;
    errors name ``parameter``.

    - the NHS number system: that NHS number (400 when it fails the check);
    - a source's local-id system: that id at that source;
    - no system: 10 digits (spaces allowed) are read as an NHS number, so one
      failing the modulus-11 check is refused (400) rather than silently
      matching nobody; a source whose local ids are 10 digits needs its system
      named. Valid NHS numbers and other values also match any source's local id;
    - any other system (or ``|value``, no system): nothing.
    """
    token = parse_token(value, parameter)
    code = token.code
    if code is None:
        raise InvalidRequest(f"{parameter} needs a value (system|value or value)", parameter)
    if token.system == NHS_NUMBER_SYSTEM or token.system is None:
        digits = normalise(code)
        is_nhs_shape = digits.isdigit() and len(digits) == 10
        if token.system is not None or is_nhs_shape:
            why = problem(code)
            if why is not None:
                hint = "" if token.system else "; a 10-digit local id needs its system|value"
                raise InvalidRequest(f"{parameter}: invalid NHS number: {why}{hint}", parameter)
            nhs = (IdentifierTest(nhs_number=digits),)
            return nhs if token.system else (*nhs, IdentifierTest(local_id=code))
        return (IdentifierTest(local_id=code),)
    source = systems.get(token.system)
    return (IdentifierTest(local_id=code, source=source),) if source else ()


#: a birthdate alternative -> its clauses, for those not anchored at ``now`` (not ``ap``):
#: the same few values (a year's bounds, a day) come again and again
_CLAUSES: dict[str, tuple[DateClause, ...]] = {}
#: at most this many kept (then the memo starts again)
_CLAUSES_KEPT = 4096


def _birth_date(value: str, now: datetime) -> tuple[DateClause, ...]:
    """``birth_date_clauses(_date(value), now)``, remembered unless it reads ``now``: a value
    not starting ``ap`` has another prefix or none (or is refused, never remembered)."""
    known = _CLAUSES.get(value)
    if known is not None:
        return known
    clauses = birth_date_clauses(_date(value), now)
    if not value.startswith("ap"):
        if len(_CLAUSES) >= _CLAUSES_KEPT:
            _CLAUSES.clear()
        _CLAUSES[value] = clauses
    return clauses


def _date(value: str) -> DateQuery:
    if "T" in value:
        raise InvalidRequest(
            f"Parameter 'birthdate' value '{value}' has a time; a birth date is YYYY, "
            "YYYY-MM or YYYY-MM-DD (with an optional prefix)",
            "birthdate",
        )
    return parse_date(value, "birthdate")


def _gender(value: str) -> str:
    system, bar, code = value.rpartition("|")
    if (bar and system not in ("", GENDER_SYSTEM)) or code not in GENDERS:
        raise InvalidRequest(
            f"gender must be one of {', '.join(sorted(GENDERS))} (optionally {GENDER_SYSTEM}|code)",
            "gender",
        )
    return code


def birth_date_clauses(query: DateQuery, now: datetime) -> tuple[DateClause, ...]:
    """A date search value as alternatives (OR) of tests on a stored date's period.

    With the query's first and last days ``qs`` and ``qe``, and the stored
    period's first and last days ``ts`` and ``te``, the R4 prefixes read:
    eq ``ts >= qs and te <= qe``; ne its negation; gt ``te > qe``;
    lt ``ts < qs``; ge ``te >= qs``; le ``ts <= qe``; sa ``ts > qe``;
    eb ``te < qs``; ap overlaps the query widened by 10% of its distance
    from ``now`` (at least a day), as ``DateQuery.matches`` does.
    """
    day = timedelta(days=1)
    qs = query.range.start.date()
    qe = (query.range.end - timedelta(microseconds=1)).date()  # its end is exclusive
    try:
        before, after = qs - day, qe + day
    except OverflowError as exc:
        raise InvalidRequest("birthdate is out of range", "birthdate") from exc

    def starts(d: date, negate: bool = False) -> DateTest:
        return DateTest("starts<=", d.isoformat(), negate)

    def ends(d: date, negate: bool = False) -> DateTest:
        return DateTest("ends>=", d.isoformat(), negate)

    match query.prefix:
        case "eq":
            return ((starts(before, True), ends(after, True)),)
        case "ne":
            return ((starts(before),), (ends(after),))
        case "gt":
            return ((ends(after),),)
        case "lt":
            return ((starts(before),),)
        case "ge":
            return ((ends(qs),),)
        case "le":
            return ((starts(qe),),)
        case "sa":
            return ((starts(qe, True),),)
        case "eb":
            return ((ends(qs, True),),)
        case _:  # "ap"
            slack = max(abs(now.astimezone(UTC) - query.range.start) * 0.1, day)
            try:
                lo, hi = query.range.start - slack, query.range.end + slack
            except OverflowError as exc:  # widened past year 1 or 9999
                raise InvalidRequest("birthdate is out of range", "birthdate") from exc
            last = hi.date() if hi.time() != datetime.min.time() else hi.date() - day
            return ((ends(lo.date()), starts(last)),)


#: person id -> (id, body) of their active consents (a person without any is left out)
Consents = Mapping[str, Sequence[tuple[str, bytes]]]


@dataclass(frozen=True)
class Found(Generic[T]):
    """One page of the people a search found, how many the caller may see in all, and
    their ids (every match shown, for the audit)."""

    page: list[T]
    total: int
    ids: tuple[str, ...]


def find_people(
    index: IndexStore,
    query: PersonQuery,
    shown: Callable[[Sequence[FoundPerson], Consents], Sequence[T | None]],
    offset: int,
    count: int,
    batch: int = 500,
) -> Found[T]:
    """Walk every match in id order, ``batch`` rows at a time; ``shown`` gives, for each
    row of a batch, what the caller may see of it (the resource, or whatever the caller
    makes of it), or None when consent or scopes withhold it (a whole batch at once,
    with the batch's active consents by person, read in the same statement as the
    batch: ``IndexStore.find_with_consents``).

    The page is the shown matches ``offset`` to ``offset + count``, and ``total``
    counts every shown match and nothing else (see the module doc).
    """
    page: list[T] = []
    ids: list[str] = []
    after = ""
    while True:
        rows, held = index.find_with_consents(query, after=after, limit=batch)
        for row, resource in zip(rows, shown(rows, held), strict=True):
            if resource is None:
                continue
            if offset <= len(ids) < offset + count:
                page.append(resource)
            ids.append(row.id)
        if len(rows) < batch:
            return Found(page, len(ids), tuple(ids))
        after = rows[-1].id
