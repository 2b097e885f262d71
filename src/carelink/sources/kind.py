"""Is the far end the kind of system its adapter speaks? Asked once, on first contact.

A source URL that points at the wrong system (the council's API configured as the
acute EPR, a web server's "not found" page) used to read as "nobody there": no
records, and exit 0. Each kind of source has a signature, one cheap ``GET`` that its
kind of system answers in a way the others do not:

=============  ==========================================  ==================================
kind           asks                                        expects
=============  ==========================================  ==================================
acute          ``/fhir/metadata``                          a CapabilityStatement, FHIR 4.0.x,
                                                           serving Patient
gp             ``/metadata``                               a CapabilityStatement, FHIR 3.0.x,
                                                           with ``gpc.getstructuredrecord``
community      ``/hl7/patients?page=1&page_size=1``        HL7 v2 ER7 (or nothing) and an
                                                           ``X-Total-Count``
social-care    ``/api/v2/persons?page=1&pageSize=1``       the council's page: ``items`` and
                                                           ``totalItems``
=============  ==========================================  ==================================

When the adapter's own signature does not match, the others are tried so that the
error can say what *is* there ("found a social-care API"), else what came back
("found HTTP 404, text/html, at /fhir/metadata"). A far end that cannot be reached
is not a verdict: ``SourceUnavailable`` as for any request, and asked again next time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from carelink.errors import SourceError, SourceUnavailable, SourceWrongKind
from carelink.observability.context import HEADER, current_request_id
from carelink.sources.base import Source
from carelink.sources.http import FHIR_JSON

#: a signature's question is small: an answer slower than this is no answer
PROBE_SECONDS = 5.0
#: how long a wrong-kind verdict stands before the source is asked again
RECHECK_SECONDS = 30.0
#: read no more of a probe's answer than this (a page of HTML, a CapabilityStatement)
PROBE_BYTES = 1 << 20
STRUCTURED_OPERATION = "gpc.getstructuredrecord"


@dataclass(frozen=True)
class Reply:
    """What one probe got back."""

    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


@dataclass(frozen=True)
class Signature:
    """How one kind of source system is recognised."""

    label: str  # "a FHIR R4 server": what an error says was expected or found
    path: str  # asked relative to the source's configured URL
    accept: str
    matches: Callable[[Reply], bool]


def _capability(reply: Reply, version: str) -> dict[str, Any] | None:
    doc = reply.json() if reply.status == 200 else None
    if (
        isinstance(doc, dict)
        and doc.get("resourceType") == "CapabilityStatement"
        and str(doc.get("fhirVersion", "")).startswith(version)
    ):
        return doc
    return None


def _rest(doc: dict[str, Any], part: str) -> list[dict[str, Any]]:
    """Every ``rest[].{part}[]`` entry of a CapabilityStatement that is an object."""
    return [
        item
        for rest in doc.get("rest") or []
        if isinstance(rest, dict)
        for item in rest.get(part) or []
        if isinstance(item, dict)
    ]


def _fhir_r4(reply: Reply) -> bool:
    doc = _capability(reply, "4.0")
    return doc is not None and any(r.get("type") == "Patient" for r in _rest(doc, "resource"))


def _gp_connect(reply: Reply) -> bool:
    doc = _capability(reply, "3.0")
    return doc is not None and any(
        str(op.get("name", "")).lstrip("$") == STRUCTURED_OPERATION
        for op in _rest(doc, "operation")
    )


def _hl7v2(reply: Reply) -> bool:
    return (
        reply.status == 200
        and reply.headers.get("X-Total-Count", "").isdigit()
        and (not reply.body.strip() or reply.body[:3] in (b"FHS", b"BHS", b"MSH"))
    )


def _social_care(reply: Reply) -> bool:
    doc = reply.json() if reply.status == 200 else None
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("items"), list)
        and isinstance(doc.get("totalItems"), int)
    )


SIGNATURES: dict[str, Signature] = {
    "acute": Signature("a FHIR R4 server", "/fhir/metadata", FHIR_JSON, _fhir_r4),
    "gp": Signature("a GP Connect provider (FHIR STU3)", "/metadata", FHIR_JSON, _gp_connect),
    "community": Signature(
        "an HL7 v2 over HTTP endpoint",
        "/hl7/patients?page=1&page_size=1",
        "x-application/hl7-v2+er7",
        _hl7v2,
    ),
    "social-care": Signature(
        "a social-care API", "/api/v2/persons?page=1&pageSize=1", "application/json", _social_care
    ),
}


def shown(url: str) -> str:
    """``url`` without any user name or password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _with_request_id(headers: dict[str, str]) -> dict[str, str]:
    request_id = current_request_id()
    if request_id is not None:
        headers[HEADER] = request_id
    return headers


async def _ask(
    session: aiohttp.ClientSession,
    source: str,
    url: str,
    sig: Signature,
    headers: Mapping[str, str],
) -> Reply:
    try:
        async with session.get(
            url,
            headers=_with_request_id({**headers, "Accept": sig.accept}),
            timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS),
            allow_redirects=False,
        ) as resp:
            body = await resp.content.read(PROBE_BYTES)
            return Reply(resp.status, resp.content_type, resp.headers.copy(), body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SourceUnavailable(source, type(exc).__name__) from exc


def _described(reply: Reply, path: str) -> str:
    """What a reply that matched no signature looks like, in a few words."""
    doc = reply.json()
    if isinstance(doc, dict) and doc.get("resourceType") == "CapabilityStatement":
        return f"a FHIR {doc.get('fhirVersion', '(no version)')} server at {path}"
    what = f"HTTP {reply.status}"
    if reply.content_type:
        what += f", {reply.content_type}"
    return f"{what}, at {path}"


async def identify(
    session: aiohttp.ClientSession,
    source: str,
    kind: str,
    url: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Return when the system at ``url`` answers as a ``kind`` source does.

    ``SourceWrongKind`` naming what was found when it answers otherwise;
    ``SourceUnavailable`` when it cannot be asked (a 5xx is not a verdict either).
    """
    root = url.rstrip("/")
    sig = SIGNATURES[kind]
    reply = await _ask(session, source, root + sig.path, sig, headers or {})
    if sig.matches(reply):
        return
    if reply.status >= 500:
        raise SourceUnavailable(source, f"HTTP {reply.status} at {sig.path}")
    found = _described(reply, sig.path)
    for other, theirs in SIGNATURES.items():
        if other == kind:
            continue
        try:
            if theirs.matches(await _ask(session, source, root + theirs.path, theirs, {})):
                found = theirs.label
                break
        except SourceUnavailable:
            continue
    raise SourceWrongKind(source, shown(url), sig.label, found)


class KindCheck:
    """An adapter's first-contact check, made once per adapter until it passes.

    The hot path pays one attribute test (``if not check.confirmed``); concurrent
    first requests share one probe. A wrong-kind verdict is given again without
    asking for ``recheck`` seconds (the setting, or the system, may be put right),
    so a misconfigured source costs its URL a few requests a minute, not several
    per gateway request.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        source: str,
        kind: str,
        url: str,
        headers: Callable[[], Mapping[str, str]] = dict,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.source = source
        self.kind = kind
        self.url = url
        self.headers = headers
        self.recheck = recheck
        self.clock = clock
        self.confirmed = False
        self._lock = asyncio.Lock()
        self._verdict: tuple[float, SourceWrongKind] | None = None

    async def ensure(self) -> None:
        """Probe unless already confirmed; raises what ``identify`` raises."""
        if self.confirmed:
            return
        async with self._lock:
            if self.confirmed:
                return
            if self._verdict is not None and self.clock() < self._verdict[0]:
                raise self._verdict[1]
            try:
                await identify(self.session, self.source, self.kind, self.url, self.headers())
            except SourceWrongKind as exc:
                self._verdict = (self.clock() + self.recheck, exc)
                raise
            self._verdict = None
            self.confirmed = True


async def confirm_kinds(sources: Mapping[str, Source]) -> dict[str, str]:
    """Ask every source that has a first-contact check (``sources.kind``) whether it is
    the kind of system its adapter speaks, all at once.

    Raises ``SourceWrongKind`` for the first that is not; returns the sources that
    could not be asked, name -> reason (a source may be down and come back).
    """
    checks = {
        n: check
        for n, s in sources.items()
        if isinstance(check := getattr(s, "kind", None), KindCheck)
    }
    results = await asyncio.gather(*(c.ensure() for c in checks.values()), return_exceptions=True)
    unreachable: dict[str, str] = {}
    for name, result in zip(checks, results, strict=True):
        if isinstance(result, SourceWrongKind):
            raise result
        if isinstance(result, SourceError):
            unreachable[name] = result.reason
        elif isinstance(result, BaseException):
            raise result
    return unreachable
