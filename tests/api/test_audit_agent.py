"""``AuditEvent?agent=`` read as the issuer and subject to find (``audit_routes._query``):
``issuer|subject`` exactly, a bare subject at any issuer, FHIR's escapes honoured."""

from __future__ import annotations

import pytest

from carelink.api.audit_routes import _query
from carelink.errors import InvalidRequest


@pytest.mark.parametrize(
    ("param", "said", "issuer", "subject"),
    [
        ("agent", "https://idp.example|dr-1", "https://idp.example", "dr-1"),
        ("agent", "urn:carelink:local-issuer|dr-1", "urn:carelink:local-issuer", "dr-1"),
        ("agent", "dr-1", None, "dr-1"),  # any issuer, as a bare value always meant
        ("agent", "Practitioner/dr-1", None, "dr-1"),  # a reference: its last segment
        ("agent", "|dr-1", "", "dr-1"),  # no issuer known
        ("agent", "https://idp.example|a\\|b", "https://idp.example", "a|b"),
        ("agent", "https://idp.example|a|b", "https://idp.example", "a|b"),
        ("agent", "iss\\|x|dr\\\\1", "iss|x", "dr\\1"),
        ("agent", "dr\\1", None, "dr\\1"),  # no bar: taken as it is, as before
        ("agent:identifier", "https://idp.example|dr/1", "https://idp.example", "dr/1"),
        ("agent:identifier", "dr/1", None, "dr/1"),  # not a reference: kept whole
    ],
)
def test_an_agent_is_an_issuer_and_a_subject(param, said, issuer, subject):
    q = _query({param: [said]}, None)
    assert (q.issuer, q.agent) == (issuer, subject)


@pytest.mark.parametrize(
    "q",
    [
        {"agent": ["iss|dr-1\\"]},
        {"agent": ["dr-1"], "agent:identifier": ["dr-1"]},
        {"agent:missing": ["dr-1"]},
    ],
)
def test_an_agent_search_that_cannot_be_read_is_refused(q):
    with pytest.raises(InvalidRequest):
        _query(q, None)
