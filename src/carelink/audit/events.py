"""AuditEvent resources in the shapes of IHE Basic Audit Log Patterns (BALP).

One event per patient touched by a request (RESTful read, search or
operation), and one for every refusal. Agents: the client application, the
user (with role and purpose of use), the server. Entities: the patient, the
query (base64, as BALP says) and the request id.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

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
#: BALP outcome codes: 0 success, 4 minor failure (refused), 8 serious failure
SUCCESS, REFUSED, FAILED = "0", "4", "8"


@dataclass(frozen=True)
class Who:
    """The user behind a request, as the audit trail records them."""

    subject: str
    role: str | None
    organisation: str | None
    purpose: str | None


@dataclass(frozen=True)
class Access:
    """One request, as the audit trail needs it."""

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


def _agents(caller: Who | None, server: str) -> list[Json]:
    """The client application, the user (with role and organisation) and the server."""
    found = _AGENTS.get((caller, server))
    if found is not None:
        return found
    agents: list[Json] = [
        {
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"display": (caller.subject if caller else "unauthenticated client")},
            "requestor": False,
        }
    ]
    if caller is not None:
        user: Json = {"who": {"identifier": {"value": caller.subject}}, "requestor": True}
        if caller.role:
            user["role"] = [{"coding": [{"system": RBAC_ROLE, "code": caller.role}]}]
        if caller.organisation:
            user["who"]["display"] = caller.organisation
            user["location"] = {"identifier": {"system": ODS, "value": caller.organisation}}
        agents.append(user)
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


class RequestEvents:
    """The AuditEvents of one request, one per patient (``event``): what they all share
    (agents, the query, the request id, the purpose) made once, and the same objects in
    each (events are only ever serialised, never changed), so a search that returns
    many people pays for each only what is that person's."""

    def __init__(
        self, access: Access, caller: Who | None, outcome: str, reason: str | None = None
    ) -> None:
        self.access = access
        self.caller = caller
        self.outcome = outcome
        self.reason = reason
        self._agents = _agents(caller, access.server)
        self._tail: list[Json] = [
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(access.query.encode()).decode(),
            },
            {"what": {"identifier": {"value": access.request_id}}, "description": "request id"},
        ]
        self._subtype = [{"system": INTERACTION, "code": access.interaction}]
        self._purpose = (
            [{"coding": [{"system": ACT_REASON, "code": caller.purpose}]}]
            if caller is not None and caller.purpose
            else None
        )

    def event(self, patient_id: str | None, break_glass: bool = False) -> Json:
        """The event for one patient (or none, for a refusal before one was known)."""
        entities = self._tail
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
            "subtype": self._subtype,
            "action": "R" if self.access.interaction == "read" else "E",
            "recorded": self.access.recorded,
            "outcome": self.outcome,
            "agent": self._agents,
            "source": _SOURCE,
            "entity": entities,
        }
        if self._purpose is not None:
            event["purposeOfEvent"] = self._purpose
        if break_glass:
            # Access under an emergency override: said in the event itself, for the reviewers.
            event["purposeOfEvent"] = _BREAK_GLASS
        if self.reason:
            event["outcomeDesc"] = self.reason
        return event


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
    patient id, outcome, requesting user. One source of truth, so ``verify`` can hold
    every stored column to the event it came with."""
    patient = None
    for entity in event.get("entity", ()):
        ref = str(entity.get("what", {}).get("reference", ""))
        if entity.get("role", {}).get("code") == "1" and ref.startswith("Patient/"):
            patient = ref.removeprefix("Patient/")
            break
    agent = next(
        (
            a.get("who", {}).get("identifier", {}).get("value")
            for a in event.get("agent", ())
            if a.get("requestor")
        ),
        None,
    )
    return str(event.get("recorded", "")), patient, str(event.get("outcome", "")), agent
