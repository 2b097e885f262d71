"""The lookup's own path must be the general search, only faster (issue 13).

``GET /Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|N`` and nothing else
is answered by ``patient_routes.lookup``, a path of its own written for speed.
The guarantee: for any caller, person, consent situation and headers, it gives
exactly what the general Patient search gives for the same question. Asked as
``...|N&_count=50`` (the default page size, so the same page and links), a
request goes the general way; the two answers must have the same status,
headers (but the date and request id) and body, byte for byte, and leave the
same audit events (but their ids, times, request ids and the query as sent).

Callers, people and headers are drawn at random: clinicians of the person's
practice and of another organisation, a privacy officer, a secondary-use
purpose, scopes that do and do not grant Patient search, a patient's own token
and another patient's, a missing or broken token; a person with or without a
recorded objection, an NHS number nobody has, one that fails the check digit,
the number percent-encoded; ``Accept`` and ``Prefer`` headers good and bad.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.integration.conftest import System
from tests.support.objections import Gateway, objections_gateway, same_answers, unknown_nhs_number

CALLERS = ["gp", "stranger", "officer", "secondary", "own-patient", "other-patient", "none", "bad"]
SCOPES = ["user/*.cruds", "user/*.rs", "user/Condition.rs", "user/Patient.r"]
#: headers mostly as clients send them, sometimes refused (406, 400)
ACCEPT = [None, None, "application/fhir+json", "application/json", "*/*", "text/html"]
PREFER = [None, None, None, "handling=strict", "handling=lenient", "wait=abc", "partial=maybe"]
SPELLING = ["plain", "encoded", "encoded-lower"]


@pytest.fixture(scope="module")
def gateway(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("lookup")
    with objections_gateway(system, tmp, 30, "lookup.db") as gateway:
        yield gateway


def _bad_check_digit(nhs: str) -> str:
    return nhs[:9] + str((int(nhs[9]) + 1) % 10)


def _spelt(nhs: str, spelling: str) -> str:
    if spelling == "plain":
        return f"identifier={NHS_NUMBER_SYSTEM}|{nhs}"
    encoded = "https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C"
    if spelling == "encoded-lower":  # percent escapes are case-insensitive, the URL is not
        encoded = encoded.replace("%3A", "%3a").replace("%2F", "%2f").replace("%7C", "%7c")
    return "identifier=" + encoded + nhs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.sampled_from(CALLERS),
    scope=st.sampled_from(SCOPES),
    index=st.integers(0, 29),
    other=st.integers(0, 29),
    objection=st.booleans(),
    number=st.sampled_from(["person", "person", "person", "nobody", "bad-check-digit"]),
    spelling=st.sampled_from(SPELLING),
    accept=st.sampled_from(ACCEPT),
    prefer=st.sampled_from(PREFER),
    start=st.integers(900_000_000, 990_000_000),
)
def test_the_lookup_path_answers_and_audits_as_the_general_search(
    gateway: Gateway,
    who: str,
    scope: str,
    index: int,
    other: int,
    objection: bool,
    number: str,
    spelling: str,
    accept: str | None,
    prefer: str | None,
    start: int,
) -> None:
    person = gateway.people[index]
    if objection:
        gateway.object(person)
    nhs = {
        "person": person.nhs_number,
        "nobody": unknown_nhs_number({p.nhs_number for p in gateway.people}, start),
        "bad-check-digit": _bad_check_digit(person.nhs_number),
    }[number]
    claims = gateway.caller(who, scope, person, gateway.people[other])
    headers = {}
    if who != "none":
        token = gateway.token(**claims) if who != "bad" else "not.a.token"
        headers["Authorization"] = f"Bearer {token}"
    if accept is not None:
        headers["Accept"] = accept
    if prefer is not None:
        headers["Prefer"] = prefer

    fast, general = (
        gateway.asked(f"/Patient?{query}", headers)
        for query in (_spelt(nhs, spelling), _spelt(nhs, spelling) + "&_count=50")
    )
    same_answers(fast, general)


def test_the_lookup_path_is_taken(gateway: Gateway) -> None:
    """The comparison above means something only if the two requests take different
    paths: the lookup's spelling is recognised, the general one is not."""
    from carelink.api.patient_routes import lookup_number

    nhs = gateway.people[0].nhs_number
    for spelling in SPELLING:
        assert lookup_number(_spelt(nhs, spelling).encode()) == nhs
        assert lookup_number((_spelt(nhs, spelling) + "&_count=50").encode()) is None
    assert lookup_number(f"identifier={nhs}".encode()) is None
    assert lookup_number(f"identifier=http://example.org|{nhs}".encode()) is None
