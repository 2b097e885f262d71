"""What every FHIR request goes through: the caller, the domain, the base URL.

Routes are plain ``async def (request) -> Response`` endpoints on a FastAPI
router, without per-parameter dependency injection: on the lookup path that
machinery costs more than the lookup itself. Every route starts with
``context(request)``, the one place the caller (``Principal``) is
established, so authentication is filled in there without touching a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carelink.api.audit_subject import person_for
from carelink.api.dispatch import first_headers
from carelink.audit import Who
from carelink.audit.events import REFUSED, SUCCESS, Frame, frame, request_rows
from carelink.audit.trail import GroupCommit
from carelink.auth import DEVELOPMENT_PRINCIPAL, Principal
from carelink.auth.tokens import Verifier, bearer
from carelink.consent import Actor, Guard, Situation
from carelink.errors import AuditError, NotFound, StorageUnavailable
from carelink.federation import SharedRecord
from carelink.observability import current_request_id, instant, new_id
from carelink.sources.gpconnect_request import Requester, act_for
from carelink.storage import Database, PersonRow
from carelink.storage.database import HOT_LIMIT

Endpoint = Callable[[Request], Awaitable[Response]]
Json = dict[str, Any]
T = TypeVar("T")


class FhirRouter(APIRouter):
    """An APIRouter whose ``fhir_get`` registers a plain GET endpoint under ``/fhir``."""

    def fhir_get(self, path: str) -> Callable[[Endpoint], Endpoint]:
        """Decorator: ``@router.fhir_get("/Patient")``."""

        def register(endpoint: Endpoint) -> Endpoint:
            self.add_route(self.prefix + path, endpoint, methods=["GET"], include_in_schema=False)
            return endpoint

        return register

    def fhir_route(self, path: str, methods: list[str]) -> Callable[[Endpoint], Endpoint]:
        """Decorator for other methods: ``@router.fhir_route("/Consent", ["POST"])``."""

        def register(endpoint: Endpoint) -> Endpoint:
            self.add_route(self.prefix + path, endpoint, methods=methods, include_in_schema=False)
            return endpoint

        return register


router = FhirRouter(prefix="/fhir")


async def stored(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, synchronous code that uses the database, on one of the database's
    threads: the event loop serves other requests meanwhile, and the request waits at
    most the statement timeout (``CARELINK_DB_TIMEOUT``) before its 503
    (``Database.run``)."""
    db: Database = request.app.state.db
    return await db.run(fn, *args)


async def looked_up(
    request: Request, fn: Callable[..., T], *args: Any, limit: float | None = HOT_LIMIT
) -> T:
    """``fn(*args)``, the indexed reads of the lookup path (``Database.looked_up``): on
    SQLite right here, else as ``stored`` within ``limit`` seconds."""
    db: Database = request.app.state.db
    return await db.looked_up(fn, *args, limit=limit)


def header(request: Request, name: bytes) -> str | None:
    """The request's header ``name`` (lower case, as the server gives every name), the
    first when repeated, or None: what ``request.headers.get`` gives, read from the
    request's headers by name (``dispatch.first_headers``: the headers walked once a
    request; Starlette's ``Headers`` is built for each read, and a header the request
    lacks is a ``KeyError`` raised and caught inside it)."""
    value = first_headers(request.scope).get(name)
    return None if value is None else value.decode("latin-1")


async def principal(request: Request) -> Principal:
    """The caller: from the bearer token when the gateway validates tokens, else the
    development caller (which ``Settings.validate`` refuses in production mode)."""
    return _principal(request)


def _principal(request: Request) -> Principal:
    verify: Verifier | None = request.app.state.verifier
    if verify is None:
        return DEVELOPMENT_PRINCIPAL
    return verify(bearer(header(request, b"authorization")))


def _kept(caller: Principal, make: Callable[[Principal], T]) -> T:
    """``make(caller)``, kept with the caller (``Principal.derived``): made once per
    principal, found again without hashing its fields."""
    found: T | None = caller.derived.get(make)
    if found is None:
        found = caller.derived[make] = make(caller)
    return found


@lru_cache(maxsize=1024)
def _actor(caller: Principal) -> Actor:
    return Actor(
        caller.subject,
        caller.role,
        caller.organisation,
        caller.purpose,
        caller.patient,
        caller.identity,
    )


def actor(caller: Principal) -> Actor:
    """The caller as consent sees them (break-glass is bound to the full identity); made
    once per caller (both are immutable), as a verified token's caller serves every
    request made with it (equal callers share one)."""
    return _kept(caller, _actor)


@lru_cache(maxsize=1024)
def _requester(caller: Principal) -> Requester:
    return Requester(caller.subject, caller.organisation or "UNK")


def requester(caller: Principal) -> Requester:
    """The person GP Connect is asked on behalf of, made once per caller (as ``actor``)."""
    return _kept(caller, _requester)


def consent_for(
    request: Request,
    caller: Principal,
    patient_id: str,
    patient: Json | None,
    consents: Sequence[tuple[str, bytes]] | None = None,
) -> Situation:
    """The consent situation of this request for one patient (purpose checked first;
    ``consents``: the patient's active consents when already read with the person)."""
    guard: Guard = request.app.state.guard
    who = actor(caller)
    guard.require_purpose(who)
    return guard.situation(who, patient_id, patient, consents)


def _as_user(scopes: frozenset[str]) -> frozenset[str]:
    return (
        frozenset(
            "user/" + s.removeprefix("system/") if s.startswith("system/") else s for s in scopes
        )
        | scopes
    )


def base_url(request: Request) -> str:
    """The FHIR base for fullUrl and links: the configured public base URL
    (``Settings.public_base``), never the request's ``Host`` header, which the caller
    chooses (``Host: evil.example`` would otherwise send the next page elsewhere)."""
    base: str = request.app.state.settings.public_base()
    return base


def _live(caller: Principal) -> Principal:
    """A backend service's caller on the live API, its system/ scopes counting as user/."""
    return replace(caller, scopes=_as_user(caller.scopes))


async def context(request: Request) -> tuple[SharedRecord, Principal, str]:
    """The domain, the caller and the base URL for one request."""
    record: SharedRecord = request.app.state.record
    caller = _principal(request)
    if caller.backend and request.app.state.policy.source.systemScopesOnLiveApi:
        # the policy lets backend services use the live API: their system/ scopes count there
        caller = _kept(caller, _live)
    request.scope.setdefault("state", {})["caller"] = caller  # request.state.caller, unwrapped
    # GP Connect audits the person a request is made for, never a generic system user
    act_for(requester(caller))
    return record, caller, base_url(request)


async def consented_person(
    request: Request, caller: Principal, pid: str, interaction: str, unknown: str
) -> tuple[Situation, PersonRow]:
    """The person and their consent situation for this caller, or ``NotFound(unknown)``
    both when nobody has the id and when consent withholds the person from the caller
    (audited as refused), so the answer does not tell the two apart."""
    situation, person, _ = await _consented(request, caller, pid, interaction, unknown, False)
    return situation, person


async def consented_record(
    request: Request,
    caller: Principal,
    pid: str,
    interaction: str,
    unknown: str,
    linked: bool = True,
) -> tuple[Situation, PersonRow, list[tuple[str, str]] | None]:
    """``consented_person`` and, when ``linked``, the (source, local id) of each of the
    person's records (``IndexStore.records_of``: what ``SharedRecord.federate`` would
    read next), read in the same call once consent has
    let the person through: consent is decided on this request's own read, as for
    ``consented_person``."""
    return await _consented(request, caller, pid, interaction, unknown, linked)


async def _consented(
    request: Request, caller: Principal, pid: str, interaction: str, unknown: str, linked: bool
) -> tuple[Situation, PersonRow, list[tuple[str, str]] | None]:
    record: SharedRecord = request.app.state.record
    guard: Guard = request.app.state.guard

    def consented() -> tuple[Situation, PersonRow, list[tuple[str, str]] | None] | None:
        records: list[tuple[str, str]] | None = None
        if linked:  # the records too, in the same read on SQLite (one snapshot)
            both = record.index.person_consents_and_records(pid)
            found = None if both is None else both[:2]
            records = None if both is None else both[2]
        else:
            found = record.index.person_with_consents(pid)  # one read: one snapshot
        if found is None:
            raise NotFound(unknown)
        person, consents = found
        patient = record.index_patient(person)  # shared while the person's bytes are these
        situation = consent_for(request, caller, pid, patient, consents)
        shown = guard.filter(situation, [patient], record.shares_patients)
        if not shown.resources:
            return None
        # read before consent was decided, never handed out unless it lets the person
        # through; on PostgreSQL the two reads are one thread hop, not two
        return situation, person, records

    found = await looked_up(request, consented)
    if found is None:
        await audit(request, interaction, [pid], REFUSED, "withheld by consent")
        raise NotFound(unknown)
    return found


@lru_cache(maxsize=1024)
def _who(caller: Principal) -> Who:
    """The caller as the audit trail records them, made once per caller (as ``actor``)."""
    return Who(
        caller.subject,
        caller.role,
        caller.organisation,
        caller.purpose,
        caller.issuer,
        caller.client_id,
        caller.patient,
    )


def _frame_of(
    caller: Principal | None, server: str, interaction: str, outcome: str, reason: str | None
) -> Frame:
    """The bytes this caller's events of this kind share (``audit.events.frame``), kept
    with the caller when there is no free-text reason (so a caller keeps at most one a
    server, interaction and outcome)."""
    if caller is None or reason is not None:
        who = None if caller is None else _kept(caller, _who)
        return frame(who, server, interaction, outcome, reason)
    key = (_frame_of, server, interaction, outcome)
    found: Frame | None = caller.derived.get(key)
    if found is None:
        found = caller.derived[key] = frame(_kept(caller, _who), server, interaction, outcome, None)
    return found


async def audit(
    request: Request,
    interaction: str,
    patient_ids: Iterable[str | None],
    outcome: str = SUCCESS,
    reason: str | None = None,
    break_glass_ids: Collection[str] = (),
) -> None:
    """Write one AuditEvent per patient touched (durably, before the answer goes out).

    Refusals and failures may name a patient any way the request did (a source's
    Patient id ...): they are filed under the index's person, or under no patient when
    the index does not know them. Events about ``break_glass_ids`` (or every event,
    when the request set ``state.break_glass``) are marked BTG. Raises ``AuditError``
    when the trail cannot be written: the request then fails closed with a 503 and no
    patient data.
    """
    trail: GroupCommit = request.app.state.audit
    # the request's state (``request.state``), read and set without its wrapper
    state: dict[str, Any] = request.scope.setdefault("state", {})
    state["audited"] = True  # an event was attempted: the safety net stands down
    ids = list(dict.fromkeys(patient_ids))
    if outcome != SUCCESS:
        record: SharedRecord = request.app.state.record
        named = ids
        try:
            ids = await stored(
                request,
                lambda: list(dict.fromkeys(person_for(record, p) if p else None for p in named)),
            )
        except StorageUnavailable as exc:  # the event cannot be filed: fail closed
            raise AuditError(f"the audit trail cannot be written now: {exc}") from None
    caller: Principal | None = state.get("caller")
    scope = request.scope
    query = scope["path"] + (
        "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
    )
    # the id the response carries (bound by api.observe), so the two can be joined
    request_id = current_request_id() or new_id()
    server = base_url(request)
    # each event straight to the bytes stored, with its columns (never made as a dict)
    rows = request_rows(
        _frame_of(caller, server, interaction, outcome, reason),
        instant(),
        query,
        request_id,
        outcome,
        ids or [None],
        new_id,
        break_glass_ids,
        bool(state.get("break_glass", False)),
    )
    await trail.record(rows)
