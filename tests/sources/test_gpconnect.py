"""The GP Connect consumer: what it sends (FACTS.md's rules), how it reads the published
example answers (valid R4, every entry accounted for), what each published error
becomes, that a person without an NHS number is never sent, and mutual TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import ssl
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from carelink.errors import SourceBadPayload, SourceNotAsked, SourceRefused, SourceUnavailable
from carelink.federation.fanout import NOT_ASKED, FanOut, Request
from carelink.fhir.gpconnect import GROUPS, INTERACTION_ID
from carelink.fhir.nhs import is_valid
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.gpconnect_errors import failure
from carelink.sources.gpconnect_record import read_structured
from carelink.sources.gpconnect_request import (
    Consumer,
    Period,
    Requester,
    asking_for,
    headers,
    on_behalf_of,
    parameters,
    parameters_json,
    trace_id,
)
from carelink.sources.tls import client_context
from tests.support.kinds import answering_kind
from tests.support.schema import problems

DATA = Path(__file__).resolve().parents[1] / "data" / "gpconnect"
RESPONSES = sorted((DATA / "responses").glob("*.json"))
NHS = "9434765919"
TODAY = dt.date(2024, 6, 1)


def published_nhs(name: str) -> str | None:
    """The NHS number of a published structured record's Patient (None: it has none)."""
    doc = json.loads((DATA / "responses" / name).read_bytes())
    for entry in doc.get("entry", ()):
        r = entry.get("resource", entry)
        if r.get("resourceType") == "Patient":
            for i in r.get("identifier", ()):
                if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number":
                    return str(i["value"])
    return None


#: the published records whose Patient carries a valid NHS number
ABOUT_SOMEONE = [p.name for p in RESPONSES if is_valid(published_nhs(p.name) or "")]


def answered_for(nhs_number: str, name: str) -> bytes:
    """A published structured record as a provider answers it for ``nhs_number``: its
    Patient carries the number asked for (a record about anyone else is refused)."""
    body = (DATA / "responses" / name).read_bytes()
    published = f'"{published_nhs(name)}"'.encode()
    assert published in body, name
    return body.replace(published, f'"{nhs_number}"'.encode())


def _decode(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
def test_every_published_response_becomes_valid_r4_with_every_entry_accounted_for(path: Path):
    doc = json.loads(path.read_text())
    reading = read_structured(doc, "gp")
    contained = sum(
        len([c for c in (e.get("resource", e).get("contained") or []) if c.get("id")])
        for e in doc["entry"]
        if e.get("resource", e).get("resourceType") == "List"
    )
    assert len(reading.fates) == len(doc["entry"]) + contained
    converted = [f for _, f in reading.fates if f == "converted"]
    assert len(converted) == len(reading.resources)
    skipped = [f for _, f in reading.fates if f.startswith("skipped")]
    assert len(skipped) == len(reading.skipped)
    for r in reading.resources:
        assert problems(r) == [], r["resourceType"]


def test_the_published_quirks_are_read_as_a_consumer_must():
    diary = read_structured(
        json.loads((DATA / "responses/diaryentries_response1.json").read_text()), "gp"
    )
    assert [r["resourceType"] for r in diary.resources].count("ServiceRequest") == 2
    allergies = read_structured(
        json.loads((DATA / "responses/allergies_response1.json").read_text()), "gp"
    )
    ids = {r["id"] for r in allergies.resources if r["resourceType"] == "AllergyIntolerance"}
    assert "Resolved-1" in ids  # contained in the resolved allergies List, taken out
    assert not [r for r in allergies.resources if r["resourceType"] == "List"]
    forwards = read_structured(
        json.loads((DATA / "responses/consultations_forwards_response1.json").read_text()), "gp"
    )
    assert any("includeConsultations is an unrecognised parameter" in n for n in forwards.notes)


ERRORS = {
    "example_invalid_nhs_number_supplied": (400, "refused", "INVALID_NHS_NUMBER"),
    "example_patient_not_found": (404, "refused", "PATIENT_NOT_FOUND"),
    "example_no_patient_consent_to_share": (403, "refused", "NO_PATIENT_CONSENT"),
    "example_access_denied": (403, "refused", "ACCESS"),
    "example_malformed_json_claim_in_request": (400, "error", "BAD_REQUEST"),
    "example_reference_not_found": (422, "error", "REFERENCE_NOT_FOUND"),
    "example_resource_not_found": (404, "refused", "NO_RECORD_FOUND"),
    "example_attempting_to_register_a_patient_that_already_exists": (409, "error", "DUPLICATE"),
    "example_unexpected_exception": (500, "unavailable", "INTERNAL_SERVER_ERROR"),
    "ssp_error_example_error_communicating_to_target_url": (502, "unavailable", "502"),
    "ssp_error_example_method_not_allowed": (405, "error", "405"),
    "ssp_error_example_unsupported_media_type": (415, "error", "415"),
    "ssp_error_example_sender_asid_is_not_authorised_for_this_interaction": (403, "refused", "403"),
    "ssp_error_example_receiver_asid_is_not_authorised_for_this_interaction": (
        403,
        "refused",
        "403",
    ),
    "ssp_error_example_sender_asid_is_not_authorised_to_send_the_interaction_to_recei": (
        403,
        "refused",
        "403",
    ),
}


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((DATA / "errors").glob("*.json")) if "clinical_area" not in p.name],
    ids=lambda p: p.stem,
)
def test_every_published_error_becomes_an_outcome_saying_what_happened(path: Path):
    key = path.stem.split("error_handling_guidance__", 1)[1]
    status, kind, says = ERRORS[key]
    got = failure("gp", status, path.read_bytes())
    if kind == "unavailable":
        assert isinstance(got, SourceUnavailable)
    else:
        assert isinstance(got, SourceRefused)
        assert got.status == kind
    assert says in got.reason or says in getattr(got, "code", "")


def test_the_in_bundle_warning_of_a_disabled_area_is_a_note():
    entry = json.loads(
        (DATA / "errors/clinical_area_config__populating_a_warning.json").read_text()
    )
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [entry]}
    assert read_structured(doc, "gp").notes == [
        "warning NOT_IMPLEMENTED: includeProblems has been disabled"
    ]


def test_types_and_periods_become_include_groups_within_the_rules():
    body = parameters(
        NHS,
        frozenset({"MedicationRequest", "AllergyIntolerance", "Observation"}),
        Period(dt.date(2023, 1, 1), dt.date(2099, 1, 1)),
        TODAY,
    )
    params = {p["name"]: p for p in body["parameter"]}
    assert params["patientNHSNumber"]["valueIdentifier"]["value"] == NHS
    assert params["includeAllergies"]["part"] == [
        {"name": "includeResolvedAllergies", "valueBoolean": True}
    ]
    assert params["includeMedication"]["part"] == [
        {"name": "medicationSearchFromDate", "valueDate": "2023-01-01"}
    ]
    period = {"start": "2023-01-01", "end": "2024-06-01"}  # never in the future
    assert params["includeUncategorisedData"]["part"][0]["valuePeriod"] == period
    assert params["includeInvestigations"]["part"][0]["valuePeriod"] == period
    assert "includeConsultations" not in params
    everything = parameters(NHS, None, Period(dt.date(2023, 1, 1)), TODAY)
    names = [p["name"] for p in everything["parameter"]]
    assert "includeConsultations" in names
    assert "includeReferrals" in names
    med = next(p for p in everything["parameter"] if p["name"] == "includeMedication")
    assert "part" not in med or all(
        q["name"] != "medicationSearchFromDate" for q in med["part"]
    )  # not permitted beside includeConsultations


class Recorder:
    """A GP Connect endpoint that notes each request and answers a fixed Bundle."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        body = answered_for(NHS, "allergies_response2.json")
        return web.Response(body=body, content_type="application/fhir+json")


async def _serve(handler, ssl_context=None):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answering_kind("gp", handler))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


def test_the_request_carries_the_ssp_headers_and_jwt_facts_requires():
    recorder = Recorder()
    dr = Requester(
        "10019",
        "A1001",
        "Test Hospital",
        "111222333444",
        "444555666777",
        "Jones",
        ("Claire",),
        ("Dr",),
    )

    async def go():
        runner, port = await _serve(recorder.handle)
        try:
            async with aiohttp.ClientSession() as session:
                source = GPConnectSource(
                    session, f"http://127.0.0.1:{port}/GP0001/STU3/1", clock=lambda: 1_700_000_000
                )
                with on_behalf_of(dr):
                    return await source.fetch_record("L1", "Patient/p1", None, nhs_number=NHS)
        finally:
            await runner.cleanup()

    answer = asyncio.run(go())
    assert answer.resources
    ((path, headers, body),) = recorder.requests
    assert path == "/GP0001/STU3/1/Patient/$gpc.getstructuredrecord"
    uuid.UUID(headers["Ssp-TraceID"])
    assert headers["Ssp-From"]
    assert headers["Ssp-To"]
    assert headers["Ssp-InteractionID"] == INTERACTION_ID
    assert headers["Content-Type"].startswith("application/fhir+json")
    token = headers["Authorization"].removeprefix("Bearer ")
    head, payload, signature = token.split(".")
    assert token.endswith(".")
    assert signature == ""
    assert _decode(head) == {"alg": "none", "typ": "JWT"}
    claims = _decode(payload)
    example = json.loads(
        (
            DATA / "jwt/cross_organisation_audit_and_provenance__jwt_payload_full_example.json"
        ).read_text()
    )
    assert set(claims) == set(example)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["iat"] == 1_700_000_000
    assert claims["reason_for_request"] == "directcare"
    assert claims["requested_scope"] == "patient/*.read"
    assert claims["aud"] == f"http://127.0.0.1:{headers['Host'].split(':')[1]}/GP0001/STU3/1"
    assert claims["sub"] == "10019"
    assert claims["requesting_practitioner"]["id"] == "10019"
    assert claims["requesting_organization"]["identifier"] == [
        {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A1001"}
    ]
    systems = {i["system"] for i in claims["requesting_practitioner"]["identifier"]}
    assert {
        "https://fhir.nhs.uk/Id/sds-user-id",
        "https://fhir.nhs.uk/Id/sds-role-profile-id",
    } <= systems
    assert claims["requesting_device"]["resourceType"] == "Device"
    sent = json.loads(body)
    assert sent["resourceType"] == "Parameters"
    assert sent["parameter"][0]["valueIdentifier"]["value"] == NHS


def test_each_requests_jwt_names_its_own_requester_provider_and_second():
    """The JWT is made once per requester, provider and second: asked again in any
    order, each request's claims are its own."""
    people = [Requester("u1", "A1001"), Requester("u2", "B2002"), Requester("u1", "B2002")]
    for _ in range(2):
        for when in (1_700_000_000, 1_700_000_001):
            for who in people:
                for aud in ("https://gp-a/STU3/1", "https://gp-b/STU3/1"):
                    token = headers(Consumer(), who, aud, when)["Authorization"]
                    got = _decode(token.removeprefix("Bearer ").split(".")[1])
                    assert (got["sub"], got["iat"], got["aud"]) == (who.user_id, when, aud)
                    org = got["requesting_organization"]["identifier"][0]["value"]
                    assert org == who.organisation_ods
    first, second = (headers(Consumer(), people[0], "a", 1)["Ssp-TraceID"] for _ in range(2))
    assert first != second  # every request its own trace id


@pytest.mark.parametrize(
    "nhs_number", [None, "", "c0f9b1de-1d1b-4f5c-9a55-1b2f1c2f0a11", "9434765918"]
)
def test_a_person_without_a_traced_nhs_number_is_never_sent(nhs_number):
    recorder = Recorder()

    async def go():
        runner, port = await _serve(recorder.handle)
        try:
            async with aiohttp.ClientSession() as session:
                source = GPConnectSource(session, f"http://127.0.0.1:{port}")
                with pytest.raises(SourceNotAsked, match="no traced NHS number"):
                    await source.fetch_record("L1", "Patient/p1", None, nhs_number=nhs_number)
                results = await FanOut({"gp": source}).gather(
                    [Request("gp", "L1", nhs_number)], "Patient/p1", None
                )
                return results
        finally:
            await runner.cleanup()

    (result,) = asyncio.run(go())
    assert recorder.requests == []
    assert result.status == NOT_ASKED
    assert "no traced NHS number" in (result.reason or "")


def _cert(name: str, issuer_key, issuer_name, key, ca: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(tmp: Path, name: str, cert: x509.Certificate, key) -> tuple[str, str]:
    c, k = tmp / f"{name}.crt", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(c), str(k)


def test_mutual_tls_with_the_configured_client_certificate(tmp_path: Path):
    """A server that demands a client certificate from the test CA answers the adapter
    with its configured certificate, and refuses a session without one."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _cert("test CA", ca_key, ca_name, ca_key, ca=True)
    ca_file, _ = _pem(tmp_path, "ca", ca, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server_cert, server_keyfile = _pem(
        tmp_path, "server", _cert("127.0.0.1", ca_key, ca_name, server_key), server_key
    )
    client_cert, client_keyfile = _pem(
        tmp_path, "client", _cert("carelink", ca_key, ca_name, client_key), client_key
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server_ctx.load_cert_chain(server_cert, server_keyfile)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    recorder = Recorder()

    async def go():
        runner, port = await _serve(recorder.handle, server_ctx)
        url = f"https://127.0.0.1:{port}"
        try:
            good = client_context("gp", client_cert, client_keyfile, ca_file)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=good)) as s:
                answer = await GPConnectSource(s, url).fetch_record("L1", "Patient/p", None, NHS)
            no_cert = client_context("gp", None, None, ca_file)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=no_cert)) as s:
                with pytest.raises(SourceUnavailable):
                    await GPConnectSource(s, url).fetch_record("L1", "Patient/p", None, NHS)
            return answer
        finally:
            await runner.cleanup()

    answer = asyncio.run(go())
    assert answer.resources
    assert len(recorder.requests) == 1


class Switchable:
    """A GP Connect endpoint whose answer the test changes between requests."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = answered_for(NHS, self.answer)
        return web.Response(body=body, content_type="application/fhir+json")


def test_the_same_answer_is_read_once_and_a_changed_one_is_read_again():
    """Every fetch asks the provider; bytes it sent before for the same question are not
    converted again (same resources, same notes), and different bytes always are."""
    gp = Switchable("consultations_forwards_response1.json")

    async def go():
        runner, port = await _serve(gp.handle)
        try:
            async with aiohttp.ClientSession() as session:
                source = GPConnectSource(session, f"http://127.0.0.1:{port}")
                fetch = source.fetch_record
                first = await fetch("L1", "Patient/p1", None, nhs_number=NHS)
                again = await fetch("L1", "Patient/p1", None, nhs_number=NHS)
                other_question = await fetch(
                    "L1", "Patient/p1", frozenset({"Encounter"}), nhs_number=NHS
                )
                gp.answer = "allergies_response2.json"
                changed = await fetch("L1", "Patient/p1", None, nhs_number=NHS)
                return first, again, other_question, changed
        finally:
            await runner.cleanup()

    first, again, other_question, changed = asyncio.run(go())
    assert gp.requests == 4
    assert again.resources is first.resources
    assert again.notes == first.notes
    assert first.notes
    assert again.skipped == first.skipped
    assert other_question.resources is not first.resources
    assert changed.resources is not first.resources
    types = {r["resourceType"] for r in changed.resources}
    assert "AllergyIntolerance" in types
    assert "Encounter" not in types
    assert not changed.notes


class Answering:
    """A GP Connect endpoint that answers every request with the bytes it is given."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/fhir+json")


def _fetch_answered(body: bytes, nhs_number: str = NHS):
    async def go():
        runner, port = await _serve(Answering(body).handle)
        try:
            async with aiohttp.ClientSession() as session:
                source = GPConnectSource(session, f"http://127.0.0.1:{port}")
                return await source.fetch_record("L1", "Patient/p1", None, nhs_number=nhs_number)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


@pytest.mark.parametrize("name", ABOUT_SOMEONE)
def test_a_record_about_someone_else_is_refused_whole(name):
    """A provider answering with another person's structured record (each published
    example as published, about its own patient, asked for 9434765919), or a record
    holding a second Patient, is unreadable as a whole: nothing of it is served as this
    person's. The same bytes about the person asked for are read."""
    published = (DATA / "responses" / name).read_bytes()
    with pytest.raises(SourceBadPayload, match="different person"):
        _fetch_answered(published)
    assert _fetch_answered(published, str(published_nhs(name))).resources
    doc = json.loads(answered_for(NHS, name))
    patient = next(
        e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    other = {**patient, "id": "someone-else", "identifier": []}
    doc["entry"].append({"resource": other})
    with pytest.raises(SourceBadPayload, match="different person"):
        _fetch_answered(json.dumps(doc).encode())
    assert _fetch_answered(answered_for(NHS, name)).resources


def test_the_period_asked_of_the_gateway_becomes_the_providers_search_periods():
    """``$everything?start=&end=`` runs its federation inside ``asking_for``: the GP
    is asked only for that period (the gateway still filters every source alike)."""
    recorder = Recorder()

    async def go():
        runner, port = await _serve(recorder.handle)
        try:
            async with aiohttp.ClientSession() as session:
                source = GPConnectSource(session, f"http://127.0.0.1:{port}/GP0001/STU3/1")
                with asking_for(Period(dt.date(2020, 1, 1), dt.date(2021, 12, 31))):
                    await source.fetch_record(
                        "L1", "Patient/p1", frozenset({"Encounter"}), nhs_number=NHS
                    )
                await source.fetch_record(
                    "L1", "Patient/p1", frozenset({"Encounter"}), nhs_number=NHS
                )
        finally:
            await runner.cleanup()

    asyncio.run(go())
    (_, _, within), (_, _, unbounded) = recorder.requests
    consultations = next(
        p for p in json.loads(within)["parameter"] if p["name"] == "includeConsultations"
    )
    period = next(p for p in consultations["part"] if p["name"] == "consultationSearchPeriod")
    assert period["valuePeriod"] == {"start": "2020-01-01", "end": "2021-12-31"}
    assert "consultationSearchPeriod" not in unbounded.decode()


R4_TYPES = sorted({t for g in GROUPS.values() for t in g.r4_types} | {"Patient", "Flag"})
DATES = st.one_of(st.none(), st.dates(dt.date(2000, 1, 1), dt.date(2030, 12, 31)))


@settings(deadline=None)
@given(
    nhs=st.text(max_size=12),
    types=st.one_of(st.none(), st.frozensets(st.sampled_from(R4_TYPES), max_size=5)),
    period=st.one_of(st.none(), st.builds(Period, DATES, DATES)),
    today=st.dates(dt.date(2000, 1, 1), dt.date(2030, 12, 31)),
)
def test_the_body_made_around_its_nhs_number_is_the_parameters_byte_for_byte(
    nhs, types, period, today
):
    """The request body with its types, period and day made once (``parameters_json``)
    is ``parameters``' JSON exactly, for any NHS number (escaped characters too), types,
    period and day, asked again or for another number. Fails when the once-made part is
    another question's."""
    want = orjson.dumps(parameters(nhs, types, period, today))  # what was sent before
    assert parameters_json(nhs, types, period, today) == want
    assert parameters_json(nhs, types, period, today) == want
    other = parameters_json(NHS, types, period, today)
    assert json.loads(other) == parameters(NHS, types, period, today)


@given(st.binary(min_size=16, max_size=16))
def test_a_trace_id_is_a_version_4_uuid_of_its_random_bytes(raw):
    """``trace_id`` is ``str(uuid.UUID(bytes=..., version=4))`` of the bytes it draws."""
    assert trace_id(lambda n: raw[:n]) == str(uuid.UUID(bytes=raw, version=4))
    made = {trace_id() for _ in range(3)}
    assert len(made) == 3
    assert all(uuid.UUID(t).version == 4 for t in made)
