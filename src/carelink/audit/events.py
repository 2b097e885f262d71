"""AuditEvent resources in the shapes of IHE Basic Audit Log Patterns (BALP).

One event per patient touched by a request (RESTful read, search or
operation), and one for every refusal. Agents: the client application, the
user (with role and purpose of use), the patient whose context the token
carried (if it did), the server. Entities: the patient, the query (base64,
as BALP says) and the request id.

Who the caller was is said whole, never by a bare subject (two issuers may
both have a ``dr-1``): the user agent's ``who.identifier`` has the token's
issuer as its ``system`` and its subject as its ``value`` (the gateway's own
tokens carry ``auth.local_issuer.LOCAL_ISSUER``, the identity provider's its
``iss``, exactly as ``auth.Principal.issuer`` holds them). A token's
``client_id`` goes on the application agent, as BALP puts the client there,
as ``who.identifier`` with the same issuer as its ``system``: the issuer
assigned the client its id, and the agent's type (Application) already says
it is a client, not a person; an ``altId`` would be a bare string again.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from carelink.storage.audit_store import Body, Shared, agent_key

Json = dict[str, Any]
#: an event ready to be stored: the columns stored beside it (``columns``), then its bytes
#: (whole, or in pieces when it shares most of them with other events of its request:
#: ``storage.audit_store.Shared``; ``whole`` joins them)
Row = tuple[str, str | None, str, str | None, Body]

EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RBAC_ROLE = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
#: BALP outcome codes: 0 success, 4 minor failure (refused), 8 serious failure
SUCCESS, REFUSED, FAILED = "0", "4", "8"


@dataclass(frozen=True)
class Who:
    """The user behind a request, as the audit trail records them: whole, as
    ``auth.Principal.identity`` tells callers apart (issuer, subject, role,
    organisation, patient context, client id)."""

    subject: str
    role: str | None
    organisation: str | None
    purpose: str | None
    issuer: str = ""
    client_id: str | None = None
    patient: str | None = None


class Access(NamedTuple):
    """One request, as the audit trail needs it (immutable; a named tuple, made once a
    request: a frozen dataclass's ``__init__`` costs nearly three times as much)."""

    interaction: str  # read | search-type | operation
    query: str  # path and query string as received
    request_id: str
    recorded: str  # FHIR instant
    server: str  # the gateway's FHIR base


#: the AuditEvent's ``source``: the same for every event
_SOURCE: Json = {
    "observer": {"display": "carelink gateway"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
}
#: the agents of recent callers (with the server they called), made once each: events
#: share them, and are only ever serialised, never changed
_AGENTS: dict[tuple[Who | None, str], list[Json]] = {}
_AGENTS_KEPT = 1024


def _identifier(system: str, value: str) -> Json:
    """An identifier in ``system`` (none when the caller's issuer is not known)."""
    return {"system": system, "value": value} if system else {"value": value}


def _agents(caller: Who | None, server: str) -> list[Json]:
    """The client application (with its client id), the user (with issuer, role and
    organisation), the patient whose context the token carried, and the server."""
    found = _AGENTS.get((caller, server))
    if found is not None:
        return found
    client: Json = {"display": (caller.subject if caller else "unauthenticated client")}
    if caller is not None and caller.client_id is not None:
        client = {"identifier": _identifier(caller.issuer, caller.client_id), **client}
    agents: list[Json] = [
        {
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": client,
            "requestor": False,
        }
    ]
    if caller is not None:
        user: Json = {
            "who": {"identifier": _identifier(caller.issuer, caller.subject)},
            "requestor": True,
        }
        if caller.role:
            user["role"] = [{"coding": [{"system": RBAC_ROLE, "code": caller.role}]}]
        if caller.organisation:
            user["who"]["display"] = caller.organisation
            user["location"] = {"identifier": {"system": ODS, "value": caller.organisation}}
        agents.append(user)
        if caller.patient is not None:
            # the citizen (or whoever acts for them) the token was issued for
            agents.append(
                {
                    "type": {
                        "coding": [{"system": ROLE_CLASS, "code": "PAT", "display": "patient"}]
                    },
                    "who": {"reference": f"Patient/{caller.patient}"},
                    "requestor": False,
                }
            )
    agents.append(
        {
            "type": {
                "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": {"display": "carelink gateway"},
            "requestor": False,
            "network": {"address": server, "type": "5"},
        }
    )
    if len(_AGENTS) >= _AGENTS_KEPT:
        _AGENTS.clear()
    _AGENTS[(caller, server)] = agents
    return agents


#: the patient entity's type and role, the same in every event
_PATIENT_TYPE: Json = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE: Json = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_BREAK_GLASS: list[Json] = [
    {"coding": [{"system": ACT_REASON, "code": "ETREAT"}]},
    {"coding": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]},
]
#: the parts of an event's bytes that ``RequestEvents.rows`` writes around its values
_PATIENT_OPEN = b'{"what":{"reference":'
_PATIENT_CLOSE = b"}," + orjson.dumps({"type": _PATIENT_TYPE, "role": _PATIENT_ROLE})[1:] + b","
_QUERY_ENTITY: Json = {
    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
    "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
}
_QUERY_OPEN = orjson.dumps(_QUERY_ENTITY)[:-1] + b',"query":'
_REQUEST_OPEN = b'},{"what":{"identifier":{"value":'
_REQUEST_CLOSE = b'}},"description":"request id"}]'
#: what every event of one kind of request shares, as bytes (``frame``): before its
#: ``recorded`` value, after it up to the open list of entities, and its end up to the
#: ``id`` value, without and with break-glass; and its ``agent`` column (``columns``)
Frame = tuple[bytes, bytes, tuple[bytes, bytes], str | None]
_FRAMES: dict[tuple[Who | None, str, str, str, str | None], Frame] = {}
_FRAMES_KEPT = 1024


def frame(
    caller: Who | None, server: str, interaction: str, outcome: str, reason: str | None
) -> Frame:
    """The bytes the events of this caller's ``interaction`` with this outcome share,
    written once per kind (as ``orjson.dumps`` writes the event's dict); a caller of
    many requests may keep it (``request_rows``)."""
    key = (caller, server, interaction, outcome, reason)
    found = _FRAMES.get(key)
    if found is not None:
        return found
    before = (
        orjson.dumps(
            {
                "resourceType": "AuditEvent",
                "type": EVENT_TYPE,
                "subtype": _subtype(interaction),
                "action": _action(interaction),
            }
        )[:-1]
        + b',"recorded":'
    )
    after = (
        b","
        + orjson.dumps(
            {"outcome": outcome, "agent": _agents(caller, server), "source": _SOURCE, "entity": []}
        )[1:-2]
    )  # open at the entities: ``]}`` cut off
    purpose = _purpose(caller)
    ends = tuple(
        b"".join(
            [
                *([b',"purposeOfEvent":', orjson.dumps(said)] if said is not None else ()),
                *([b',"outcomeDesc":', orjson.dumps(reason)] if reason else ()),
                b',"id":',
            ]
        )
        for said in (purpose, _BREAK_GLASS)
    )
    if len(_FRAMES) >= _FRAMES_KEPT:
        _FRAMES.clear()
    agent = None if caller is None else agent_key(caller.subject, caller.issuer)
    made: Frame = (before, after, (ends[0], ends[1]), agent)
    _FRAMES[key] = made
    return made


def _subtype(interaction: str) -> list[Json]:
    return [{"system": INTERACTION, "code": interaction}]


def _action(interaction: str) -> str:
    return "R" if interaction == "read" else "E"


def _purpose(caller: Who | None) -> list[Json] | None:
    if caller is None or not caller.purpose:
        return None
    return [{"coding": [{"system": ACT_REASON, "code": caller.purpose}]}]


class RequestEvents:
    """The AuditEvents of one request, one per patient (``event``): what they all share
    (agents, the query, the request id, the purpose) made once, and the same objects in
    each (events are only ever serialised, never changed), so a search that returns
    many people pays for each only what is that person's.

    ``rows`` gives events ready to be stored without making them: their bytes written
    from those shared parts as bytes (``frame``, made once per caller and kind of
    request), the very bytes ``orjson.dumps`` writes for ``event`` with its ``id`` last,
    and the columns ``columns`` reads from it (``tests/audit/test_event_rows.py`` holds
    them to both)."""

    def __init__(
        self, access: Access, caller: Who | None, outcome: str, reason: str | None = None
    ) -> None:
        self.access = access
        self.caller = caller
        self.outcome = outcome
        self.reason = reason
        self._shared: tuple[list[Json], list[Json], list[Json] | None] | None = None
        before, after, self._ends, self._agent = frame(
            caller, access.server, access.interaction, outcome, reason
        )
        self._query = base64.b64encode(access.query.encode()).decode()
        self._entities = _entities(self._query, access.request_id)
        self._head = b"".join((before, orjson.dumps(access.recorded), after))

    def _parts(self) -> tuple[list[Json], list[Json], list[Json] | None]:
        """The agents, the entities after the patient's, the purpose: made on first use."""
        if self._shared is None:
            tail: list[Json] = [
                {**_QUERY_ENTITY, "query": self._query},
                {
                    "what": {"identifier": {"value": self.access.request_id}},
                    "description": "request id",
                },
            ]
            self._shared = (_agents(self.caller, self.access.server), tail, _purpose(self.caller))
        return self._shared

    def event(self, patient_id: str | None, break_glass: bool = False) -> Json:
        """The event for one patient (or none, for a refusal before one was known)."""
        agents, entities, purpose = self._parts()
        if patient_id:
            patient: Json = {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": _PATIENT_TYPE,
                "role": _PATIENT_ROLE,
            }
            entities = [patient, *entities]
        event: Json = {
            "resourceType": "AuditEvent",
            "type": EVENT_TYPE,
            "subtype": _subtype(self.access.interaction),
            "action": _action(self.access.interaction),
            "recorded": self.access.recorded,
            "outcome": self.outcome,
            "agent": agents,
            "source": _SOURCE,
            "entity": entities,
        }
        if purpose is not None:
            event["purposeOfEvent"] = purpose
        if break_glass:
            # Access under an emergency override: said in the event itself, for the reviewers.
            event["purposeOfEvent"] = _BREAK_GLASS
        if self.reason:
            event["outcomeDesc"] = self.reason
        return event

    def rows(
        self,
        patient_ids: Iterable[str | None],
        event_id: Callable[[], str],
        break_glass_ids: Collection[str] = (),
        break_glass: bool = False,
    ) -> list[Row]:
        """The stored row (columns, bytes) of ``event`` for each of ``patient_ids`` in turn,
        each with a new ``event_id()``, marked break-glass when ``break_glass`` is or its
        patient is in ``break_glass_ids``: one loop for a request's events (a search's one
        a person)."""
        return _rows(
            self._head,
            self._entities,
            self._ends,
            (self.access.recorded, self.outcome, self._agent),
            patient_ids,
            event_id,
            break_glass_ids,
            break_glass,
        )


def request_rows(
    kind: Frame,
    recorded: str,
    query: str,
    request_id: str,
    outcome: str,
    patient_ids: Iterable[str | None],
    event_id: Callable[[], str],
    break_glass_ids: Collection[str] = (),
    break_glass: bool = False,
) -> list[Row]:
    """What ``RequestEvents(Access(..., query, request_id, recorded, ...), caller, outcome,
    reason).rows(patient_ids, event_id, break_glass_ids, break_glass)`` gives, ``kind``
    being ``frame(caller, server, interaction, outcome, reason)``: the request's rows
    without the objects, for the request path (one call a request; a caller keeps its
    frames, ``api.deps``)."""
    before, after, ends, agent = kind
    head = b"".join((before, orjson.dumps(recorded), after))
    entities = _entities(base64.b64encode(query.encode()).decode(), request_id)
    columns = (recorded, outcome, agent)
    return _rows(head, entities, ends, columns, patient_ids, event_id, break_glass_ids, break_glass)


def _entities(query: str, request_id: str) -> bytes:
    """The event's entities after the patient's (the query, base64, and the request id),
    as bytes up to the end of the list."""
    return b"".join(
        (_QUERY_OPEN, orjson.dumps(query), _REQUEST_OPEN, orjson.dumps(request_id), _REQUEST_CLOSE)
    )


def _rows(
    head: bytes,
    entities: bytes,
    ends: tuple[bytes, bytes],
    columns: tuple[str, str, str | None],
    patient_ids: Iterable[str | None],
    event_id: Callable[[], str],
    break_glass_ids: Collection[str],
    break_glass: bool,
) -> list[Row]:
    recorded, outcome, agent = columns
    dumps = orjson.dumps
    out: list[Row] = []
    pids = list(patient_ids)
    # a request's events about several people share all but the patient and the id: in
    # pieces, what they share one object (stored once, ``storage.audit_store.Shared``)
    shared = (
        (head + _PATIENT_OPEN, _PATIENT_CLOSE + entities + ends[0], b"}")
        if len(pids) > 1 and not break_glass
        else None
    )
    for pid in pids:
        glass = break_glass or pid in break_glass_ids
        if pid and shared is not None and not glass:
            out.append(
                (
                    recorded,
                    pid,
                    outcome,
                    agent,
                    Shared(shared, (dumps(f"Patient/{pid}"), dumps(event_id()))),
                )
            )
            continue
        end = ends[glass]
        if pid:
            patient = dumps(f"Patient/{pid}")
            body = b"".join(
                (
                    head,
                    _PATIENT_OPEN,
                    patient,
                    _PATIENT_CLOSE,
                    entities,
                    end,
                    dumps(event_id()),
                    b"}",
                )
            )
        else:
            body = b"".join((head, entities, end, dumps(event_id()), b"}"))
        out.append((recorded, pid or None, outcome, agent, body))
    return out


def row_of(event: Json) -> Row:
    """An event made as a dict, ready to be stored: its columns and its bytes."""
    recorded, patient, outcome, agent = columns(event)
    return recorded, patient, outcome, agent, orjson.dumps(event)


def audit_event(
    access: Access,
    caller: Who | None,
    patient_id: str | None,
    outcome: str,
    reason: str | None = None,
    break_glass: bool = False,
) -> Json:
    """One AuditEvent for one patient (or none, for a refusal before one was known)."""
    return RequestEvents(access, caller, outcome, reason).event(patient_id, break_glass)


def columns(event: Json) -> tuple[str, str | None, str, str | None]:
    """What the trail stores beside an event, read from the event itself: recorded,
    patient id, outcome, requesting user (``storage.audit_store.agent_key``: subject and
    issuer). One source of truth, so ``verify`` can hold every stored column to the event
    it came with (a row of an older scheme to ``legacy_agent``)."""
    patient = None
    for entity in event.get("entity", ()):
        ref = str(entity.get("what", {}).get("reference", ""))
        if entity.get("role", {}).get("code") == "1" and ref.startswith("Patient/"):
            patient = ref.removeprefix("Patient/")
            break
    said = _requestor(event)
    value = said.get("value")
    agent = None if value is None else agent_key(value, said.get("system", ""))
    return str(event.get("recorded", "")), patient, str(event.get("outcome", "")), agent


def legacy_agent(event: Json) -> str | None:
    """The ``agent`` column as rows before chain 3 stored it: the bare subject."""
    value: str | None = _requestor(event).get("value")
    return value


def _requestor(event: Json) -> Json:
    """The requesting agent's identifier (empty when there is none)."""
    for a in event.get("agent", ()):
        if a.get("requestor"):
            found = a.get("who", {}).get("identifier", {})
            return found if isinstance(found, dict) else {}
    return {}
