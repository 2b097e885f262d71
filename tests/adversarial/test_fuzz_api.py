"""Issue 11: a fuzzer over every route, with valid tokens, finds no 5xx.

The FHIR routes are registered without an OpenAPI schema (``FhirRouter``), so
instead of schemathesis this walks ``carelink.api.router`` itself: every route
and method registered there is fuzzed, so a new route is covered without
touching this file. Hypothesis picks a route, a method, path parameters (real
ids, junk, unicode, very long, ``..``, ``%00``), query parameters (the names
the gateway knows and random ones, with prefixes, modifiers, commas, pipes,
empty and huge values), a body (valid-ish FHIR, broken JSON, deep nesting,
wrong content types), request headers (Accept, conditional, Prefer) and one
of several kinds of valid token, and sends it to a real gateway process
(token mode, a private copy of the integration index).

Every answer must be below 500, and every error must be an OperationOutcome
served as ``application/fhir+json`` (``/auth/token`` answers OAuth errors
instead, RFC 6749 section 5.2).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from carelink.api import router
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators.population import Person
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import copy_index, person_id, token_gateways
from tests.support.tokens import Issuer

STRANGER = "RXX01"
KNOWN = {
    ("GET", "/fhir/metadata"),
    ("GET", "/fhir/Patient"),
    ("GET", "/fhir/Patient/{pid}"),
    ("GET", "/fhir/Patient/{pid}/$everything"),
    ("POST", "/fhir/Patient/{pid}/$everything"),
    ("GET", "/fhir/Patient/{pid}/{rtype}"),
    ("GET", "/fhir/Patient/$ihe-pix"),
    ("POST", "/fhir/Patient/$break-glass"),
    ("GET", "/fhir/{rtype}"),
    ("POST", "/fhir/{rtype}/_search"),
    ("GET", "/fhir/{rtype}/{rid}"),
    ("POST", "/fhir/Consent"),
    ("PUT", "/fhir/Consent/{cid}"),
    ("DELETE", "/fhir/Consent/{cid}"),
    ("GET", "/fhir/Consent"),
    ("GET", "/fhir/Consent/{cid}/_history/{vid}"),
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/fhir/Task"),
    ("POST", "/fhir/Task/{tid}/$review"),
    ("GET", "/fhir/$export"),
    ("POST", "/fhir/Group/{gid}/$export"),
    ("GET", "/fhir/$export-status/{job}"),
    ("DELETE", "/fhir/$export-status/{job}"),
    ("GET", "/fhir/$export-file/{job}/{name}"),
    ("POST", "/auth/token"),
    ("POST", "/cds-services/patient-consent-consult"),
}
#: answers that follow another specification's error format, not FHIR's
NOT_FHIR = {"/auth/token"}


def _endpoints() -> list[tuple[str, str]]:
    """Every (method, path) the router registers, HEAD included."""
    out = []
    for route in router.routes:
        assert isinstance(route, Route)
        out.extend((method, route.path) for method in route.methods or ())
    return sorted(out)


ENDPOINTS = _endpoints()


def test_the_fuzzer_enumerates_at_least_every_known_route() -> None:
    assert set(ENDPOINTS) >= KNOWN
    assert len(ENDPOINTS) >= len(KNOWN)


@dataclass
class Target:
    base: str  # http://host:port (the router's paths carry /fhir themselves)
    tokens: dict[str, str] = field(repr=False)
    ids: dict[str, list[str]] = field(repr=False)  # path parameter name -> real values


@pytest.fixture(scope="module")
def target(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    db = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / "shared.db")
    issuer = Issuer()
    with token_gateways(system.env, db, issuer, tmp) as (started,):
        fhir = started.base

        def token(**claims: Any) -> str:
            claims.setdefault("scope", "user/*.cruds")
            return issuer.token(aud=fhir, **claims)

        person, other = [p for p in system.population if {"gp", "acute"} <= p.sources][-2:]
        gp = token(organisation=person.gp_ods, sub=f"gp-{person.gp_ods}")
        gp_other = token(organisation=other.gp_ods, sub=f"gp-{other.gp_ods}")
        pid = _pid(fhir, person, gp)
        officer = token(role="R0001", sub="privacy-officer-1")
        stored = httpx.post(
            f"{fhir}/Consent",
            # an objection on someone else's record, so the fuzzed person stays readable
            content=json.dumps(privacy_consent(_pid(fhir, other, gp_other), {"type": "deny"})),
            headers={"Authorization": f"Bearer {officer}", "Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert stored.status_code == 201, stored.text
        cid = str(stored.json()["id"])
        tokens = {
            "stranger": token(organisation=STRANGER, sub="dr-stranger"),
            "gp": gp,
            "officer": officer,
            "patient": token(
                sub=f"citizen-{pid}",
                role=None,
                organisation=None,
                patient=pid,
                scope="patient/*.cruds",
                purpose_of_use="PATRQT",
            ),
            "backend": token(
                sub="analytics",
                client_id="analytics",
                role=None,
                organisation=None,
                scope="system/*.rs",
                purpose_of_use="HRESCH",
            ),
            "read-only": token(organisation=STRANGER, sub="dr-ro", scope="user/*.rs"),
        }
        ids = {
            "pid": [pid],
            "rid": [pid, cid],
            "cid": [cid],
            "vid": ["1", "2"],
            "rtype": ["Patient", "Condition", "Observation", "Consent", "AuditEvent", "Task"],
            "gid": ["all"],
        }
        yield Target(fhir.removesuffix("/fhir"), tokens, ids)


def _pid(fhir: str, person: Person, token: str) -> str:
    return person_id(fhir, f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}", token)


# --- strategies ---------------------------------------------------------------------------

JUNK = st.sampled_from(
    ["..", "../..", "%00", "\x00", "%2e%2e", "-1", "0", "", " ", "null", "$everything", "*"]
)
TEXT = st.text(min_size=0, max_size=30)
LONG = st.integers(min_value=1000, max_value=20_000).map(lambda n: "x" * n)
QUERY_NAMES = [
    "patient",
    "subject",
    "identifier",
    "_id",
    "_count",
    "_offset",
    "_page",
    "_since",
    "_lastUpdated",
    "_type",
    "_elements",
    "_summary",
    "_sort",
    "_include",
    "_revinclude",
    "_format",
    "code",
    "category",
    "date",
    "status",
    "name",
    "family",
    "given",
    "birthdate",
    "gender",
    "address-postalcode",
    "sourceIdentifier",
    "targetSystem",
    "agent",
    "entity",
    "type",
    "_outputFormat",
    "_typeFilter",
    "start",
    "end",
]
MODIFIERS = st.sampled_from(["", ":exact", ":contains", ":missing", ":not", ":bogus", ".x", ":"])
PREFIXES = st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz"])
VALUES = st.one_of(
    TEXT,
    JUNK,
    LONG,
    st.integers().map(str),
    st.sampled_from(
        [
            f"{NHS_NUMBER_SYSTEM}|9434765919",
            "|",
            "||",
            "a,b,,c",
            "Patient,Condition",
            "2026-13-45",
            "2026-01-01T00:00:00Z",
            "1e999",
            "NaN",
            "-0",
            "true",
            "urn:x|",
            "|value",
        ]
    ),
    st.tuples(PREFIXES, TEXT).map("".join),
    st.lists(TEXT, max_size=4).map(",".join),
    st.lists(TEXT, max_size=4).map("|".join),
)
KNOWN_PARAM = st.tuples(st.sampled_from(QUERY_NAMES), st.sampled_from(["", "", "", ":exact"]))
ANY_PARAM = st.tuples(st.one_of(st.sampled_from(QUERY_NAMES), TEXT), MODIFIERS)
#: half the time no query or well-formed names only, so the routes get past validation too
QUERY = st.one_of(
    st.just([]),
    st.lists(st.tuples(KNOWN_PARAM.map("".join), VALUES), max_size=3),
    st.lists(st.tuples(ANY_PARAM.map("".join), VALUES), max_size=6),
)


def _nested(depth: int) -> bytes:
    """JSON nested ``depth`` levels deep (written by hand: ``json.dumps`` would recurse)."""
    return b'{"resourceType":"Parameters","a":[' * depth + b"{}" + b"]}" * depth


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
RESOURCE_TYPES = st.sampled_from(
    ["Parameters", "Consent", "Bundle", "Patient", "OperationOutcome", "", None, 7]
)


@st.composite
def fhirish(draw: st.DrawFn, pid: str) -> Any:
    """Something shaped like what the routes accept, with parts broken at random."""
    shape = draw(st.sampled_from(["consent", "parameters", "hook", "random"]))
    if shape == "consent":
        body: dict[str, Any] = privacy_consent(draw(st.sampled_from([pid, "nobody", ""])), {})
        body["provision"] = draw(
            st.one_of(st.just({"type": "deny"}), st.just({"type": "permit"}), JSONISH)
        )
    elif shape == "parameters":
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": draw(st.sampled_from([*QUERY_NAMES, "reason", "patient", "decision"]))}
                | draw(
                    st.sampled_from(
                        [
                            {"valueString": draw(VALUES)},
                            {"valueReference": {"reference": f"Patient/{pid}"}},
                            {"valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": pid}},
                            {"valueCode": draw(TEXT)},
                            {"valueInteger": draw(st.integers())},
                            {"resource": draw(JSONISH)},
                            {},
                        ]
                    )
                )
                for _ in range(draw(st.integers(0, 3)))
            ],
        }
    elif shape == "hook":
        body = {
            "hook": "patient-consent-consult",
            "hookInstance": draw(TEXT),
            "context": draw(st.one_of(JSONISH, st.just({"patientId": pid}))),
        }
    else:
        body = draw(st.dictionaries(TEXT, JSONISH, max_size=5))
    if draw(st.booleans()):
        body["resourceType"] = draw(RESOURCE_TYPES)
    return body


@st.composite
def bodies(draw: st.DrawFn, pid: str) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["fhir", "fhir", "json", "broken", "deep", "form", "empty"]))
    ctype = draw(
        st.sampled_from(
            [
                "application/fhir+json",
                "application/json",
                "application/x-www-form-urlencoded",
                "text/plain",
                "application/fhir+xml",
                "multipart/form-data",
                "",
            ]
        )
    )
    if kind == "fhir":
        return json.dumps(draw(fhirish(pid))).encode(), ctype
    if kind == "json":
        return json.dumps(draw(JSONISH)).encode(), ctype
    if kind == "broken":
        return draw(st.binary(max_size=200) | TEXT.map(str.encode)), ctype
    if kind == "deep":
        return _nested(draw(st.integers(200, 5000))), ctype
    if kind == "form":
        return urllib.parse.urlencode(draw(QUERY)).encode(), ctype
    return b"", ctype


#: request headers the routes read (conditional requests, Prefer, content negotiation)
HEADERS = st.dictionaries(
    st.sampled_from(
        ["Accept", "If-None-Match", "If-Match", "If-Modified-Since", "Prefer", "Accept-Encoding"]
    ),
    st.one_of(
        st.sampled_from(
            [
                "application/fhir+json",
                "application/fhir+ndjson",
                "text/html",
                "*/*",
                'W/"1"',
                '"x"',
                "*",
                "Mon, 30 Nov 2026 10:00:00 GMT",
                "yesterday",
                "respond-async",
                "return=representation",
                "handling=strict",
                "gzip",
            ]
        ),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
    ),
    max_size=3,
)


@st.composite
def requests(
    draw: st.DrawFn, t: Target
) -> tuple[str, str, list[tuple[str, str]], Any, str, dict[str, str]]:
    method, template = draw(st.sampled_from(ENDPOINTS))
    path = template
    for name in re.findall(r"{(\w+)}", template):
        real = st.sampled_from(t.ids.get(name, ["x"]))
        value = draw(real | st.one_of(TEXT, JUNK, LONG) if draw(st.booleans()) else real)
        raw = draw(st.booleans())
        path = path.replace("{" + name + "}", value if raw else urllib.parse.quote(value, safe=""))
    body: tuple[bytes, str] | None = None
    if method in {"POST", "PUT"}:
        body = draw(bodies(t.ids["pid"][0]))
    who = draw(st.sampled_from(sorted(t.tokens)))
    return method, path, draw(QUERY), body, who, draw(HEADERS)


# --- the property -------------------------------------------------------------------------


def _send(
    t: Target,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    body: Any,
    who: str,
    extra: dict[str, str],
) -> httpx.Response:
    headers = {**extra, "Authorization": f"Bearer {t.tokens[who]}"}
    content = None
    if body is not None:
        content, ctype = body
        if ctype:
            headers["Content-Type"] = ctype
    # the path goes raw (``..``, ``%00``, unicode), the way a hostile client sends it
    url = httpx.URL(t.base).copy_with(raw_path=_raw(path, query))
    return httpx.request(method, url, content=content, headers=headers, timeout=60)


def _raw(path: str, query: list[tuple[str, str]]) -> bytes:
    safe = urllib.parse.quote(path, safe="/%:$._-~")
    qs = urllib.parse.urlencode(query)
    return (safe + ("?" + qs if qs else "")).encode("ascii")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_route_answers_5xx_and_every_error_is_an_operation_outcome(
    target: Target, data: st.DataObject
) -> None:
    method, path, query, body, who, extra = data.draw(requests(target))
    r = _send(target, method, path, query, body, who, extra)
    assert r.status_code < 500, (r.status_code, r.text[:2000])
    if r.status_code >= 400 and method != "HEAD" and not any(path.startswith(p) for p in NOT_FHIR):
        assert r.headers["content-type"].startswith("application/fhir+json"), (
            r.status_code,
            r.headers.get("content-type"),
            r.text[:500],
        )
        assert r.json()["resourceType"] == "OperationOutcome", r.text[:500]
