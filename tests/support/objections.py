"""A token gateway the adversarial tests talk to as several callers, recording patients'
objections through the API as a privacy officer would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators.population import Person
from carelink.storage import Database
from carelink.storage.audit_store import AuditStore
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import copy_index, token_gateways
from tests.support.tokens import Issuer


@contextmanager
def objections_gateway(system: System, tmp: Path, people: int, db: str) -> Iterator[Gateway]:
    """A gateway of its own over a copy of the system's index (file ``db`` in ``tmp``), so
    the objections recorded through it change nothing other tests see; its people are the
    first ``people`` registered with a GP (and no social-care variant)."""
    copy = copy_index(system.env["CARELINK_DATABASE_URL"], tmp / db)
    issuer = Issuer()
    chosen = [p for p in system.population if "gp" in p.sources and not p.social_variant]
    with token_gateways(system.env, copy, issuer, tmp) as (started,):
        gateway = Gateway(started.base, issuer, chosen[:people], copy)
        try:
            yield gateway
        finally:
            gateway.close()


def unknown_nhs_number(known: set[str], start: int) -> str:
    """A valid NHS number (check digit right) from ``start`` on that nobody in ``known`` has."""
    for n in range(start, 999_999_999):
        digit = check_digit(str(n))
        if digit is not None and f"{n}{digit}" not in known:
            return f"{n}{digit}"
    raise AssertionError("no free NHS number")  # pragma: no cover


@dataclass
class Gateway:
    """One running gateway (``base``) over a private index (``db``: a SQLite file or a
    database URL), read directly through ``database``."""

    base: str
    issuer: Issuer = field(repr=False)
    people: list[Person] = field(repr=False)
    db: str | Path | None = None
    _database: Database | None = field(default=None, repr=False)
    ids: dict[str, str] = field(default_factory=dict, repr=False)  # NHS number -> merged id
    objected: set[str] = field(default_factory=set, repr=False)  # NHS numbers

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)

    def caller(self, who: str, scope: str, person: Person, other: Person) -> dict[str, Any]:
        """The claims of a drawn caller of ``person``'s record: ``gp`` (their practice),
        ``officer`` (a privacy officer), ``secondary`` (a secondary-use purpose),
        ``own-patient`` / ``other-patient`` (``person``'s or ``other``'s own token, the
        scope in the patient context), anyone else a clinician of no organisation."""
        claims: dict[str, Any] = {"scope": scope}
        if who == "gp":
            claims.update(organisation=person.gp_ods, sub=f"gp-{person.gp_ods}")
        elif who == "officer":
            claims.update(role="R0001", sub="privacy-officer-1")
        elif who == "secondary":
            claims.update(purpose_of_use="HRESCH")
        elif who in ("own-patient", "other-patient"):
            owner = person if who == "own-patient" else other
            claims.update(
                patient=self.pid(owner),
                scope=scope.replace("user/", "patient/"),
                role=None,
                organisation=None,
            )
        return claims

    def asked(
        self, path: str, headers: dict[str, str], params: Any = None
    ) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """The answer to ``GET path`` (with ``params``) and the audit events it left, but
        what differs between any two requests (``normal_event``)."""
        request_id = str(uuid.uuid4())
        r = httpx.get(
            f"{self.base}{path}",
            params=params,
            headers={**headers, "X-Request-ID": request_id},
            timeout=30,
        )
        return r, [normal_event(e) for e in self.events(request_id)]

    def get(self, path: str, token: str, params: dict[str, str]) -> httpx.Response:
        return httpx.get(
            f"{self.base}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def pid(self, person: Person) -> str:
        """The person's merged id, looked up once by their practice."""
        if person.nhs_number not in self.ids:
            gp = self.token(organisation=person.gp_ods, sub=f"gp-{person.gp_ods}")
            r = self.get("/Patient", gp, {"identifier": f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"})
            assert r.status_code == 200, r.text
            self.ids[person.nhs_number] = str(r.json()["entry"][0]["resource"]["id"])
        return self.ids[person.nhs_number]

    def object(self, person: Person) -> None:
        """Record the person's objection to sharing (once), as a privacy officer."""
        if person.nhs_number in self.objected:
            return
        r = httpx.post(
            f"{self.base}/Consent",
            content=json.dumps(privacy_consent(self.pid(person), {"type": "deny"})),
            headers={
                "Authorization": f"Bearer {self.token(role='R0001', sub='privacy-officer-1')}",
                "Content-Type": "application/fhir+json",
            },
            timeout=30,
        )
        assert r.status_code == 201, r.text
        self.objected.add(person.nhs_number)

    def database(self) -> Database:
        """The gateway's own database, opened once (closed by ``close``)."""
        if self._database is None:
            assert self.db is not None, "the gateway's database is not known"
            self._database = Database(str(self.db))
        return self._database

    def events(self, request_id: str) -> list[dict[str, Any]]:
        """The AuditEvents a request left in the trail, found by its request id: each
        event's bytes whole, as ``verify`` reads them (a search's events are stored in
        part, the request id in what they share)."""
        wanted = request_id.encode()
        return [
            json.loads(r.event) for r in AuditStore(self.database()).rows() if wanted in r.event
        ]

    def close(self) -> None:
        if self._database is not None:
            self._database.dispose()
            self._database = None


def normal_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event without what differs between any two requests: ids, times, the request
    id and the query as sent."""
    out = {k: v for k, v in event.items() if k not in ("id", "recorded", "meta")}
    out["entity"] = [
        e
        for e in event.get("entity", [])
        if e.get("description") != "request id"
        and e.get("role", {}).get("code") != "24"  # the query
    ]
    return out


def same_answers(
    one: tuple[httpx.Response, list[dict[str, Any]]],
    other: tuple[httpx.Response, list[dict[str, Any]]],
) -> None:
    """Two answers (``Gateway.asked``) with the same status, headers (but the date and
    request id) and body, byte for byte, and the same audit events, at least one."""
    (a, a_events), (b, b_events) = one, other
    assert a.status_code == b.status_code, (a.text, b.text)
    assert _headers(a) == _headers(b)
    assert a.content == b.content
    assert a_events == b_events
    assert a_events, "every request leaves an audit event"


def _headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k not in ("date", "x-request-id")}
