"""A token gateway the adversarial tests talk to as several callers, recording patients'
objections through the API as a privacy officer would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit
from carelink.simulators.population import Person
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
        yield Gateway(started.base, issuer, chosen[:people], copy)


def unknown_nhs_number(known: set[str], start: int) -> str:
    """A valid NHS number (check digit right) from ``start`` on that nobody in ``known`` has."""
    for n in range(start, 999_999_999):
        digit = check_digit(str(n))
        if digit is not None and f"{n}{digit}" not in known:
            return f"{n}{digit}"
    raise AssertionError("no free NHS number")  # pragma: no cover


@dataclass
class Gateway:
    """One running gateway (``base``) over a private index copy (``db``)."""

    base: str
    issuer: Issuer = field(repr=False)
    people: list[Person] = field(repr=False)
    db: Path | None = None
    ids: dict[str, str] = field(default_factory=dict, repr=False)  # NHS number -> merged id
    objected: set[str] = field(default_factory=set, repr=False)  # NHS numbers

    def token(self, **claims: Any) -> str:
        claims.setdefault("scope", "user/*.cruds")
        return self.issuer.token(aud=self.base, **claims)

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

    def events(self, request_id: str) -> list[dict[str, Any]]:
        """The AuditEvents a request left in the trail, found by its request id."""
        assert self.db is not None, "events are read from the gateway's SQLite file"
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT event FROM audit_events WHERE CAST(event AS TEXT) LIKE ? ORDER BY seq",
                (f"%{request_id}%",),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]
