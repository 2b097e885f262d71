"""What a GP Connect consumer sends: the STU3 ``Parameters``, the Spine headers and the JWT.

``parameters`` turns what the gateway was asked (R4 resource types, a period)
into ``include*`` groups and their part parameters, keeping to the combinations
the specification allows. ``headers`` adds the four ``Ssp-*`` headers and the
unsigned JWT the provider audits the request by, built from the ``Requester``
(who is asking, from the caller's principal) and the ``Consumer`` (this
gateway, as registered with Spine).

>>> body = parameters("9434765919", frozenset({"AllergyIntolerance"}), None, date(2024, 1, 2))
>>> [p["name"] for p in body["parameter"]]
['patientNHSNumber', 'includeAllergies']
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

import orjson

from carelink.fhir.gpconnect import (
    FHIR_JSON_UTF8,
    GROUPS,
    INTERACTION_ID,
    JWT_LIFETIME,
    NOT_WITH_CONSULTATIONS,
    NOT_WITH_PROBLEMS,
    ODS_SYSTEM,
    REASON_DIRECT_CARE,
    SCOPE_READ,
    SDS_ROLE_PROFILE_SYSTEM,
    SDS_USER_SYSTEM,
    SSP_FROM,
    SSP_INTERACTION_ID,
    SSP_TO,
    SSP_TRACE_ID,
)
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.sources.base import Json

PARAMETERS_PROFILE = (
    "https://fhir.nhs.uk/STU3/OperationDefinition/GPConnect-GetStructuredRecord-Operation-1"
)
#: the groups asked for when every type is wanted (diary entries are future recalls,
#: not record: asked for only when named)
EVERY_AREA = tuple(name for name in GROUPS if name != "includeDiaryEntries")


@dataclass(frozen=True)
class Period:
    """The clinical dates the caller asked for (either end open)."""

    start: date | None = None
    end: date | None = None


@dataclass(frozen=True)
class Requester:
    """The person on whose behalf the gateway asks (GP Connect audits them, never a
    generic system user): their id, SDS ids, name and organisation."""

    user_id: str
    organisation_ods: str
    organisation_name: str = ""
    sds_user_id: str = "UNK"
    sds_role_profile_id: str = "UNK"  # UNK: no smartcard
    family: str = "Unknown"
    given: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class Consumer:
    """This gateway as Spine knows it: ASIDs, endpoint, product, and the identifier
    systems it uses for its devices and users."""

    asid: str = "200000000359"
    provider_asid: str = "918999198993"
    endpoint: str = "https://carelink.example/gpconnect"
    device_id: str = "carelink-gateway"
    model: str = "carelink"
    version: str = "0"
    device_system: str = "https://carelink.example/Id/device"
    user_system: str = "https://carelink.example/Id/user"
    #: who is named when nobody is (an export job, the index build)
    fallback: Requester = Requester("carelink-system", "CARELINK", "carelink gateway")


_acting_for: ContextVar[Requester | None] = ContextVar("carelink_gpc_requester", default=None)


@contextmanager
def on_behalf_of(requester: Requester | None) -> Iterator[None]:
    """Within the block, GP Connect requests name ``requester`` in their JWT."""
    token = _acting_for.set(requester)
    try:
        yield
    finally:
        _acting_for.reset(token)


def act_for(requester: Requester | None) -> None:
    """Name ``requester`` for the rest of the current task (the HTTP edge, per request)."""
    _acting_for.set(requester)


_asked_period: ContextVar[Period | None] = ContextVar("gpconnect_period", default=None)


@contextmanager
def asking_for(period: Period | None) -> Iterator[None]:
    """Within the block, GP Connect requests ask only for ``period`` (``$everything``'s
    ``start`` and ``end``): the provider's search periods, so it sends less."""
    token = _asked_period.set(period)
    try:
        yield
    finally:
        _asked_period.reset(token)


def current_period() -> Period | None:
    """The period the current request asked for, if any."""
    return _asked_period.get()


def current_requester() -> Requester | None:
    """Who the current request is made on behalf of, if anyone said."""
    return _acting_for.get()


def _part(name: str, kind: str, value: object) -> Json:
    key = {"boolean": "valueBoolean", "date": "valueDate", "period": "valuePeriod"}[kind]
    return {"name": name, key: value}


def _period(p: Period, today: date) -> Json | None:
    end = min(p.end, today) if p.end else None
    start = p.start if p.start and p.start <= today else None
    if start and end and start > end:
        return None
    out = {k: v.isoformat() for k, v in (("start", start), ("end", end)) if v}
    return out or None


def areas_for(types: frozenset[str] | None) -> tuple[str, ...]:
    """The ``include*`` groups that bring resources of ``types`` (every area for None)."""
    if types is None:
        return EVERY_AREA
    return tuple(name for name in EVERY_AREA if GROUPS[name].r4_types & types)


def parameters(
    nhs_number: str, types: frozenset[str] | None, period: Period | None, today: date
) -> Json:
    """The STU3 ``Parameters`` body asking for ``types`` within ``period``.

    Dates are whole dates, never in the future; a part the specification forbids next to
    ``includeConsultations`` (or ``includeProblems``) is left out, so the answer may
    be wider than asked; the gateway does not narrow it.
    """
    areas = areas_for(types)
    window = _period(period, today) if period else None
    since = period.start if period and period.start and period.start <= today else None
    forbidden: frozenset[str] = frozenset()
    if "includeConsultations" in areas:
        forbidden = NOT_WITH_CONSULTATIONS
    elif "includeProblems" in areas:
        forbidden = NOT_WITH_PROBLEMS
    wanted: dict[str, list[Json]] = {
        "includeAllergies": [_part("includeResolvedAllergies", "boolean", True)],
        "includeMedication": (
            [_part("medicationSearchFromDate", "date", since.isoformat())] if since else []
        ),
        "includeConsultations": (
            [_part("consultationSearchPeriod", "period", window)] if window else []
        ),
        "includeUncategorisedData": (
            [_part("uncategorisedDataSearchPeriod", "period", window)] if window else []
        ),
        "includeInvestigations": (
            [_part("investigationSearchPeriod", "period", window)] if window else []
        ),
        "includeReferrals": [_part("referralSearchPeriod", "period", window)] if window else [],
    }
    out: list[Json] = [
        {
            "name": "patientNHSNumber",
            "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number},
        }
    ]
    for name in areas:
        parts = [p for p in wanted.get(name, []) if p["name"] not in forbidden]
        out.append({"name": name, "part": parts} if parts else {"name": name})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [PARAMETERS_PROFILE]},
        "parameter": out,
    }


def parameters_json(
    nhs_number: str, types: frozenset[str] | None, period: Period | None, today: date
) -> bytes:
    """``orjson.dumps(parameters(...))``, the same bytes, with everything but the NHS
    number made once per types, period and day (``_areas_json``): a request's body."""
    head, tail = _areas_json(types, period, today)
    nhs = orjson.dumps({"system": NHS_NUMBER_SYSTEM, "value": nhs_number})
    return b"".join((head, nhs, tail))


@lru_cache(maxsize=256)
def _areas_json(
    types: frozenset[str] | None, period: Period | None, today: date
) -> tuple[bytes, bytes]:
    """The body of ``parameters`` for these types, period and day around its NHS number:
    the JSON before the number's ``valueIdentifier`` and after it."""
    marker = "\u0000carelink-nhs-number\u0000"  # no NHS number looks like it
    whole = orjson.dumps(parameters(marker, types, period, today))
    spot = orjson.dumps({"system": NHS_NUMBER_SYSTEM, "value": marker})
    head, found, tail = whole.partition(spot)
    if not found or spot in tail:  # pragma: no cover - the marker is ours, once
        raise AssertionError("the NHS number's place in the parameters was not found")
    return head, tail


def trace_id(random: Callable[[int], bytes] = os.urandom) -> str:
    """A random (version 4) UUID as text, ``str(uuid.uuid4())``'s form, for
    ``Ssp-TraceID``: one per request."""
    raw = bytearray(random(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


def claims(consumer: Consumer, requester: Requester, audience: str, now: int) -> Json:
    """The JWT claims of one request (``exp`` exactly five minutes after ``iat``)."""
    return {
        "iss": consumer.endpoint,
        "sub": requester.user_id,
        "aud": audience,
        "exp": now + JWT_LIFETIME,
        "iat": now,
        "reason_for_request": REASON_DIRECT_CARE,
        "requested_scope": SCOPE_READ,
        "requesting_device": {
            "resourceType": "Device",
            "identifier": [{"system": consumer.device_system, "value": consumer.device_id}],
            "model": consumer.model,
            "version": consumer.version,
        },
        "requesting_organization": {
            "resourceType": "Organization",
            "identifier": [{"system": ODS_SYSTEM, "value": requester.organisation_ods}],
            "name": requester.organisation_name or requester.organisation_ods,
        },
        "requesting_practitioner": {
            "resourceType": "Practitioner",
            "id": requester.user_id,
            "identifier": [
                {"system": SDS_USER_SYSTEM, "value": requester.sds_user_id},
                {"system": SDS_ROLE_PROFILE_SYSTEM, "value": requester.sds_role_profile_id},
                {"system": consumer.user_system, "value": requester.user_id},
            ],
            "name": [
                {
                    "family": requester.family,
                    "given": list(requester.given),
                    "prefix": list(requester.prefix),
                }
            ],
        },
    }


def unsigned_jwt(payload: Json) -> str:
    """``header.payload.`` with ``alg: none``: GP Connect's JWTs are not signed (the TLS
    client certificate authenticates the system; the JWT is audit data)."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."


@lru_cache(maxsize=1024)
def authorization(consumer: Consumer, requester: Requester, audience: str, now: int) -> str:
    """The ``Authorization`` header: ``Bearer`` and the unsigned JWT of ``claims``, made
    once per requester, provider and second (every request in that second carries it)."""
    return "Bearer " + unsigned_jwt(claims(consumer, requester, audience, now))


def headers(
    consumer: Consumer,
    requester: Requester,
    audience: str,
    now: int,
    new_trace_id: Callable[[], str] = trace_id,
) -> dict[str, str]:
    """Every header of one ``$gpc.getstructuredrecord`` request but the request id."""
    return {
        SSP_TRACE_ID: new_trace_id(),
        SSP_FROM: consumer.asid,
        SSP_TO: consumer.provider_asid,
        SSP_INTERACTION_ID: INTERACTION_ID,
        "Authorization": authorization(consumer, requester, audience, now),
        "Accept": FHIR_JSON_UTF8,
        "Content-Type": FHIR_JSON_UTF8,
    }
