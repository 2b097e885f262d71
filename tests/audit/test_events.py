"""AuditEvents made for many callers in any order carry each one's own agents: the
parts made once per caller and server (``audit.events._agents``) never mix callers,
and an event is what a fresh one for the same request would be."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.audit import events
from carelink.audit.events import Access, RequestEvents, Who, audit_event, columns
from carelink.storage.audit_store import agent_key

names = st.sampled_from(["dr-a", "dr-b", "nurse-c"])
callers = st.one_of(
    st.none(),
    st.builds(
        Who,
        names,
        st.sampled_from([None, "R8000", "R8013"]),
        st.sampled_from([None, "RXX01", "RYY02"]),
        st.sampled_from([None, "TREAT", "ETREAT"]),
    ),
)
servers = st.sampled_from(["http://a.example/fhir", "http://b.example/fhir"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(callers, servers, st.sampled_from(["p1", "p2", None])), max_size=30))
def test_each_event_has_its_own_callers_agents(requests):
    for caller, server, patient in requests:
        access = Access("read", "/fhir/Patient/x", "rid", "2026-12-01T00:00:00.000Z", server)
        made = audit_event(access, caller, patient, "0")
        events._AGENTS.clear()  # the same event made with nothing remembered
        fresh = audit_event(access, caller, patient, "0")
        assert orjson.dumps(made) == orjson.dumps(fresh)
        user = next((a for a in made["agent"] if a["requestor"]), None)
        if caller is None:
            assert user is None
        else:
            assert user is not None
            assert user["who"]["identifier"]["value"] == caller.subject
            assert user["who"].get("display") == caller.organisation
            assert columns(made)[3] == agent_key(caller.subject, caller.issuer)
        assert made["agent"][-1]["network"]["address"] == server


@settings(max_examples=60, deadline=None)
@given(
    callers,
    st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3", None]), st.booleans()), max_size=8),
    st.sampled_from([None, "withheld by consent"]),
)
def test_a_requests_events_are_each_what_it_would_be_alone(caller, patients, reason):
    """The parts one request's events share are never one event's: each is, byte for byte,
    the event made for its patient alone."""
    access = Access("search-type", "/fhir/Patient?family=x", "rid", "2026-12-01T00:00:00Z", "b")
    made = RequestEvents(access, caller, "0", reason)
    together = [made.event(pid, btg) for pid, btg in patients]
    for (pid, btg), event in zip(patients, together, strict=True):
        assert orjson.dumps(event) == orjson.dumps(
            audit_event(access, caller, pid, "0", reason, btg)
        )
        assert columns(event)[1] == pid


def test_an_event_has_the_balp_shape():
    """The whole event for a search that returned a patient under break-glass, as stored."""
    access = Access("search-type", "/fhir/Patient?family=x", "rid", "2026-12-01T00:00:00Z", "b")
    caller = Who("dr", "R8000", "RXX01", "TREAT")
    event = RequestEvents(access, caller, "0").event("p1", break_glass=True)
    act = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    entity_type = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
    role = "http://terminology.hl7.org/CodeSystem/object-role"
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    assert event == {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
        "action": "E",
        "recorded": "2026-12-01T00:00:00Z",
        "outcome": "0",
        "agent": [
            {
                "type": {"coding": [{"system": dcm, "code": "110150", "display": "Application"}]},
                "who": {"display": "dr"},
                "requestor": False,
            },
            {
                "who": {"identifier": {"value": "dr"}, "display": "RXX01"},
                "requestor": True,
                "role": [
                    {
                        "coding": [
                            {
                                "system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode",
                                "code": "R8000",
                            }
                        ]
                    }
                ],
                "location": {
                    "identifier": {
                        "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                        "value": "RXX01",
                    }
                },
            },
            {
                "type": {
                    "coding": [{"system": dcm, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": {"display": "carelink gateway"},
                "requestor": False,
                "network": {"address": "b", "type": "5"},
            },
        ],
        "source": {
            "observer": {"display": "carelink gateway"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                }
            ],
        },
        "entity": [
            {
                "what": {"reference": "Patient/p1"},
                "type": {"system": entity_type, "code": "1", "display": "Person"},
                "role": {"system": role, "code": "1", "display": "Patient"},
            },
            {
                "type": {"system": entity_type, "code": "2", "display": "System Object"},
                "role": {"system": role, "code": "24", "display": "Query"},
                "query": "L2ZoaXIvUGF0aWVudD9mYW1pbHk9eA==",
            },
            {"what": {"identifier": {"value": "rid"}}, "description": "request id"},
        ],
        "purposeOfEvent": [
            {"coding": [{"system": act, "code": "ETREAT"}]},
            {"coding": [{"system": act, "code": "BTG", "display": "break the glass"}]},
        ],
    }
