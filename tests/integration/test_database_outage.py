"""The gateway on PostgreSQL through a proxy the test controls: the database goes down,
freezes and comes back, and the gateway neither freezes nor needs a restart."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import token_gateways
from tests.support.procs import carelink
from tests.support.tcp_proxy import TcpProxy, proxy_to, with_host
from tests.support.tokens import Issuer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: seconds: the gateway's database time limit in these tests, and how soon it must be
#: answering again once the database is back
DB_TIMEOUT = 1.0
RECOVERY = 10.0
#: export retention: 9 s (swept every 4.5 s, so a sweep is likely to meet the blip)
TTL_HOURS = 0.0025
#: seconds a refused request may take while the database is frozen: its own wait for the
#: database, then the safety net's wait to write its audit event, and a margin
REFUSED_WITHIN = 2 * DB_TIMEOUT + 1.5


@pytest.fixture(scope="module")
def schema_url() -> Iterator[str]:
    """A schema of its own in the test PostgreSQL database, for this module."""
    base = os.environ.get("CARELINK_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CARELINK_TEST_POSTGRES_URL is not set")
    schema = f"carelink_outage_{uuid.uuid4().hex[:10]}"
    admin = Database(base)
    with admin.engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Outage:
    base: str
    proxy: TcpProxy
    issuer: Issuer
    exports: Path
    nhs_number: str

    def clinician(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(aud=self.base)}"}

    def officer(self, purpose: str = "TREAT") -> dict[str, str]:
        """A privacy officer: records consents, reviews, and (for oversight) reads the audit."""
        token = self.issuer.token(
            aud=self.base,
            sub="outage-officer",
            role="R0001",
            scope="user/*.cruds",
            purpose_of_use=purpose,
        )
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def analyst(self) -> dict[str, str]:
        token = self.issuer.token(
            aud=self.base,
            sub="outage-analyst",
            role=None,
            organisation=None,
            scope="system/*.rs",
            purpose_of_use="HRESCH",
            client_id="outage-analyst",
        )
        return {"Authorization": f"Bearer {token}"}

    def lookup(self, timeout: float = 15) -> httpx.Response:
        return httpx.get(
            f"{self.base}/Patient",
            params={"identifier": f"{NHS_NUMBER_SYSTEM}|{self.nhs_number}"},
            headers=self.clinician(),
            timeout=timeout,
        )

    def recovered(self, within: float = RECOVERY) -> float:
        """Seconds until a clinical lookup answers 200 again."""
        start = time.monotonic()
        while time.monotonic() - start < within:
            if self.lookup().status_code == 200:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"no 200 within {within} s of the database coming back")

    def export(self) -> str:
        kick = httpx.get(
            f"{self.base}/$export",
            params={"_type": "Patient"},
            headers={**self.analyst(), "Prefer": "respond-async"},
            timeout=15,
        )
        assert kick.status_code == 202, kick.text
        return kick.headers["Content-Location"]

    def finished(self, status_url: str, within: float = 60) -> httpx.Response:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r = httpx.get(status_url, headers=self.analyst(), timeout=15)
            if r.status_code != 202:
                return r
            time.sleep(0.1)
        raise AssertionError(f"{status_url} did not finish within {within} s")


@pytest.fixture(scope="module")
def outage(
    schema_url: str, system: System, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outage]:
    built = carelink(["index", "build"], {**system.env, "CARELINK_DATABASE_URL": schema_url})
    assert built.returncode == 0, built.stderr
    target = urlsplit(schema_url)
    tmp = tmp_path_factory.mktemp("outage")
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        extra = {
            "CARELINK_DATABASE_URL": with_host(schema_url, "127.0.0.1", proxy.port),
            "CARELINK_DB_TIMEOUT": str(DB_TIMEOUT),
            "CARELINK_DB_CONNECT_TIMEOUT": "1",
            "CARELINK_EXPORTS": str(tmp / "exports"),
            "CARELINK_EXPORT_TTL_HOURS": str(TTL_HOURS),
            "CARELINK_MASTER_KEY": str(tmp / "master.key"),
            "CARELINK_AUDIT_KEYS": str(tmp / "audit"),
            "CARELINK_AUDIT_CHECKPOINTS": str(tmp / "checkpoints"),
        }
        issuer = Issuer()
        with token_gateways(system.env, tmp / "unused.db", issuer, tmp, extra=extra) as (gw,):
            person = system.population[0]
            yield Outage(gw.base, proxy, issuer, tmp / "exports", person.nhs_number)


def test_metadata_answers_within_a_second_while_the_database_is_frozen(outage: Outage):
    # before: the gateway answers (its first connection, made through the proxy on a
    # loaded machine, may take longer than the lookup's one-second bound)
    outage.recovered()
    outage.proxy.freeze()
    answers: list[httpx.Response] = []
    try:
        start = time.monotonic()
        first = outage.lookup()
        # the first request waits the database's time limit (twice: its read, then the
        # safety net's audit event), then is refused; the server is not held meanwhile
        assert first.status_code == 503
        assert first.headers["Retry-After"]
        assert time.monotonic() - start < 2 * DB_TIMEOUT + 1.5
        waiting = [
            threading.Thread(target=lambda: answers.append(outage.lookup())) for _ in range(3)
        ]
        for t in waiting:
            t.start()
        for _ in range(5):
            start = time.monotonic()
            meta = httpx.get(f"{outage.base}/metadata", timeout=5)
            assert meta.status_code == 200
            assert time.monotonic() - start < 1.0
            time.sleep(0.2)
        for t in waiting:
            t.join(15)
    finally:
        outage.proxy.resume()
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert all(a.headers["Retry-After"] for a in answers)
    assert outage.recovered() < RECOVERY


def test_clinical_requests_get_503_while_the_database_is_down_then_recover(outage: Outage):
    outage.recovered()  # before: the gateway answers
    outage.proxy.kill()
    try:
        down = outage.lookup()
        assert down.status_code == 503
        assert int(down.headers["Retry-After"]) > 0
        assert down.json()["resourceType"] == "OperationOutcome"
        assert "Traceback" not in down.text
    finally:
        outage.proxy.resume()
    # the first audited requests after the blip succeed: readers and the audit writer
    # reconnect by themselves
    assert outage.recovered() < RECOVERY
    assert all(outage.lookup().status_code == 200 for _ in range(5))


def _blip(proxy: TcpProxy, seconds: float = 3.0) -> None:
    proxy.kill()
    time.sleep(seconds)
    proxy.resume()


def test_an_export_asked_for_after_a_blip_completes(outage: Outage):
    _blip(outage.proxy)
    outage.recovered()
    done = outage.finished(outage.export())
    assert done.status_code == 200, done.text
    assert any(o["type"] == "Patient" for o in done.json()["output"])


def test_an_expired_export_is_deleted_on_time_after_a_blip(outage: Outage):
    status = outage.export()
    done = outage.finished(status)
    assert done.status_code == 200, done.text
    job = status.rstrip("/").rsplit("/", 1)[1]
    files = outage.exports / job
    assert files.is_dir()
    asked = time.monotonic()
    _blip(outage.proxy)
    ttl = TTL_HOURS * 3600
    while files.exists() and time.monotonic() - asked < ttl + ttl / 2 + 10:
        time.sleep(0.1)
    assert not files.exists(), "the retention sweeper stopped after the blip"


# -- every request path while the database is frozen ------------------------------------


@dataclass
class Known:
    """What the route table's requests name: a person, one of their Consents, and (made
    just before the row that reads it: the module's exports expire in seconds) a finished
    export job's status URL."""

    pid: str
    family: str
    birth_date: str
    nhs_number: str
    consent: str
    job: str = ""


@pytest.fixture(scope="module")
def known(outage: Outage, system: System) -> Known:
    person = system.population[0]
    found = outage.lookup()
    assert found.status_code == 200, found.text
    pid = found.json()["entry"][0]["resource"]["id"]
    stored = httpx.post(
        f"{outage.base}/Consent",
        content=json.dumps(privacy_consent(pid, {"type": "permit"})),
        headers=outage.officer(),
        timeout=15,
    )
    assert stored.status_code == 201, stored.text
    return Known(
        pid, person.family, person.birth_date.isoformat(), person.nhs_number, stored.json()["id"]
    )


def _finished_job(o: Outage, k: Known) -> Known:
    job = o.export()
    assert o.finished(job).status_code == 200
    return replace(k, job=job)


Ask = Callable[[Outage, Known, float], httpx.Response]


def _get(path: Callable[[Known], str], who: str = "clinician", **params: str) -> Ask:
    def ask(o: Outage, k: Known, timeout: float) -> httpx.Response:
        headers = {
            "clinician": o.clinician,
            "officer": o.officer,
            "oversight": lambda: o.officer("HOPERAT"),
            "analyst": o.analyst,
        }[who]()
        query = {name: value.format(k=k) for name, value in params.items()}
        url = path(k) if path(k).startswith("http") else f"{o.base}{path(k)}"
        return httpx.get(url, params=query, headers=headers, timeout=timeout)

    return ask


def _new_export(o: Outage, k: Known, timeout: float) -> httpx.Response:
    headers = {**o.analyst(), "Prefer": "respond-async"}
    return httpx.get(
        f"{o.base}/$export", params={"_type": "Patient"}, headers=headers, timeout=timeout
    )


def _new_consent(o: Outage, k: Known, timeout: float) -> httpx.Response:
    body = privacy_consent(k.pid, {"type": "permit"})
    return httpx.post(
        f"{o.base}/Consent", content=json.dumps(body), headers=o.officer(), timeout=timeout
    )


Prepare = Callable[[Outage, Known], Known]

#: (request path, the request, its status once the database is back[, what it needs made first])
ROUTES: list[tuple[Any, ...]] = [
    (
        "demographic search",
        _get(lambda k: "/Patient", family="{k.family}", birthdate="{k.birth_date}"),
        200,
    ),
    ("patient read", _get(lambda k: f"/Patient/{k.pid}"), 200),
    (
        "IHE PIXm",
        _get(
            lambda k: "/Patient/$ihe-pix",
            sourceIdentifier=f"{NHS_NUMBER_SYSTEM}|{{k.nhs_number}}",
        ),
        200,
    ),
    ("everything", _get(lambda k: f"/Patient/{k.pid}/$everything"), 200),
    ("type search", _get(lambda k: "/Condition", patient="{k.pid}"), 200),
    ("consent read", _get(lambda k: f"/Consent/{k.consent}", "officer"), 200),
    ("consent history", _get(lambda k: f"/Consent/{k.consent}/_history", "officer"), 200),
    ("consent search", _get(lambda k: "/Consent", "officer", patient="{k.pid}"), 200),
    ("consent create", _new_consent, 201),
    ("review list", _get(lambda k: "/Task", "officer"), 200),
    ("audit search", _get(lambda k: "/AuditEvent", "oversight", patient="{k.pid}"), 200),
    ("export status", _get(lambda k: k.job, "analyst"), 200, _finished_job),
    ("export kick-off", _new_export, 202),
]


def _timed(fn: Callable[[], httpx.Response]) -> tuple[httpx.Response | None, float]:
    """The answer (None when there was none within the client's timeout) and its seconds."""
    start = time.monotonic()
    try:
        answer: httpx.Response | None = fn()
    except httpx.TimeoutException:
        answer = None
    return answer, time.monotonic() - start


@pytest.mark.parametrize("row", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_frozen_database_costs_each_route_a_prompt_503_and_never_the_server(
    outage: Outage, known: Known, row: tuple[Any, ...]
):
    """With the database frozen (connections open, no byte through), the request is
    refused with a 503 OperationOutcome and Retry-After within the time limits, /livez is
    answered at once meanwhile, and once the database is back the route works again."""
    path, ask, ok, *prepare = row
    for made in prepare:
        known = made(outage, known)
    assert ask(outage, known, 15).status_code == ok
    outage.proxy.freeze()
    try:
        with ThreadPoolExecutor(2) as pool:
            refused = pool.submit(_timed, lambda: ask(outage, known, REFUSED_WITHIN + 3))
            time.sleep(0.2)  # the request is waiting for the database now
            livez = outage.base.removesuffix("/fhir") + "/livez"
            live = pool.submit(_timed, lambda: httpx.get(livez, timeout=5))
            (answer, took), (probe, probe_took) = refused.result(), live.result()
    finally:
        outage.proxy.resume()
    assert probe is not None, f"/livez: no answer in {probe_took:.1f} s"
    assert probe.status_code == 200
    assert probe_took < 1.0, f"/livez took {probe_took:.2f} s while {path} waited"
    assert answer is not None, f"{path}: no answer within {took:.1f} s"
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert took < REFUSED_WITHIN, f"{path} was refused after {took:.2f} s"
    _works_again(outage, known, row)


def _works_again(outage: Outage, known: Known, row: tuple[Any, ...]) -> None:
    """The route answers as it should within ``RECOVERY`` of the database being back."""
    path, ask, ok, *_ = row
    deadline = time.monotonic() + RECOVERY
    again: Any = None
    while time.monotonic() < deadline:
        again = ask(outage, known, 15)
        if again.status_code == ok:
            break
        time.sleep(0.2)
    assert again is not None
    assert again.status_code == ok, f"{path} after recovery: {again.status_code}"


def test_connections_lost_without_a_word_cost_prompt_503s_and_the_gateway_recovers(
    outage: Outage,
):
    """Every open connection to the database is lost silently (a network path that died:
    nothing closed, nothing answered, for good), then new connections reach the database
    again. Each connection the gateway keeps (the hot reads', the audit writer's) waits
    for an answer that never comes: the gateway must refuse promptly meanwhile and answer
    again soon after the database can be reached, without a restart."""
    outage.recovered()
    outage.proxy.lose()
    try:
        answer, took = _timed(lambda: outage.lookup(REFUSED_WITHIN + 3))
    finally:
        outage.proxy.resume()
    assert answer is not None, f"no answer within {took:.1f} s"
    assert answer.status_code == 503, answer.text
    assert took < REFUSED_WITHIN, f"refused after {took:.2f} s"
    assert outage.recovered() < RECOVERY


@pytest.mark.parametrize("row", ROUTES, ids=[r[0] for r in ROUTES])
def test_connections_lost_without_a_word_cost_each_route_a_503_never_the_gateway(
    outage: Outage, known: Known, row: tuple[Any, ...]
):
    """Every route, with the connections it has used lost without a word and new ones
    held (then let through): the request is refused with a 503 within the time limits,
    and once the database can be reached again the route works within ``RECOVERY``,
    however many connections in the pool, kept by a thread or held by the audit writer
    were lost."""
    path, ask, ok, *prepare = row
    for made in prepare:
        known = made(outage, known)
    assert ask(outage, known, 15).status_code == ok
    outage.proxy.lose()
    try:
        answer, took = _timed(lambda: ask(outage, known, REFUSED_WITHIN + 3))
    finally:
        outage.proxy.resume()
    assert answer is not None, f"{path}: no answer within {took:.1f} s"
    assert answer.status_code == 503, answer.text
    assert took < REFUSED_WITHIN, f"{path} was refused after {took:.2f} s"
    _works_again(outage, known, row)
