"""The gateway on PostgreSQL through a proxy the test controls: the database goes down,
freezes and comes back, and the gateway neither freezes nor needs a restart."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from carelink.export.anonymous import SPOOL
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database, JobStore
from carelink.storage.export_store import LEASE_SECONDS
from carelink.storage.tables import consents, export_jobs
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


# -- an export whose database connections are cut while it runs ------------------------

#: the simulators' median answer time (ms) while an export is cut: the integration
#: population then takes the job some seconds to read, so it is reading when cut
SLOW_SOURCES_MS = 100.0
#: seconds the job reads before its connections are cut, and how long they stay cut
CUT_AFTER, CUT_FOR = 1.0, 2.0
#: seconds within which a job the database failed is run again and done: its lease runs
#: out (it is claimed again then, and run from the start), and a margin for the run
RUN_AGAIN_WITHIN = LEASE_SECONDS + 20


@contextmanager
def _slow_sources(system: System) -> Iterator[None]:
    """Every simulator answering in about ``SLOW_SOURCES_MS`` for the length of the
    block, then as it did before."""
    before = {
        name: httpx.get(f"{url}/_admin/faults", timeout=5).json()
        for name, url in system.sources.items()
    }
    for name in system.sources:
        system.faults(name, latency_ms=SLOW_SOURCES_MS, latency_sigma=0.1)
    try:
        yield
    finally:
        for name, was in before.items():
            system.faults(name, latency_ms=was["latency_ms"], latency_sigma=was["latency_sigma"])


def _open_jobs(jobs: JobStore) -> dict[str, tuple[str, float, str]]:
    """Each export job waiting or running: its status, seconds left of its lease, its
    progress (the database read past the proxy)."""
    with jobs.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                export_jobs.c.id,
                export_jobs.c.status,
                export_jobs.c.lease_until,
                export_jobs.c.progress,
            ).where(export_jobs.c.status.in_(("accepted", "running")))
        ).all()
    return {r[0]: (r[1], round(r[2] - time.time(), 1), r[3]) for r in rows}


def _idle(jobs: JobStore, within: float = LEASE_SECONDS + 30) -> None:
    """Return once no export job waits or runs (the runner takes one at a time: jobs
    earlier tests asked for, or one whose run the database cut, run again once its lease
    runs out, would come first)."""
    deadline = time.monotonic() + within
    while waiting := _open_jobs(jobs):
        assert time.monotonic() < deadline, f"export jobs still open after {within} s: {waiting}"
        time.sleep(0.1)


def _claimed(jobs: JobStore, job: str, within: float = 30) -> None:
    """Return once ``job`` is running."""
    deadline = time.monotonic() + within
    while (row := jobs.get(job)) is None or row.status != "running":
        assert time.monotonic() < deadline, f"{job} not claimed in {within} s: {_open_jobs(jobs)}"
        time.sleep(0.02)


def _released_patients(outage: Outage, manifest: dict[str, Any]) -> Counter[str]:
    """Each anonymised Patient across the export's NDJSON files, as its content without
    its fresh id (the same people give the same contents), counted; every id once."""
    patients = []
    for item in manifest["output"]:
        if item["type"] == "Patient":
            got = httpx.get(item["url"], headers=outage.analyst(), timeout=15)
            assert got.status_code == 200, got.text
            patients += [json.loads(line) for line in got.text.splitlines() if line.strip()]
    assert len({p["id"] for p in patients}) == len(patients), "a Patient id written twice"
    counted = sum(item["count"] for item in manifest["output"] if item["type"] == "Patient")
    assert counted == len(patients), "the manifest's count is not what its files hold"
    return Counter(
        json.dumps({k: v for k, v in p.items() if k != "id"}, sort_keys=True) for p in patients
    )


@pytest.mark.parametrize("cut", ["lost", "killed"])
def test_an_export_cut_off_from_its_database_while_it_runs_completes_whole_or_fails(
    outage: Outage, system: System, schema_url: str, cut: str
):
    """A bulk export is running (claimed, reading the population) when its database
    connections are lost without a word (``lose``) or cut (``kill``), and a few seconds
    later the database can be reached again. Then the job either completes with every
    Patient exactly once across its NDJSON files (the very Patients of a fresh export of
    the same population, none missing, none twice), or its status URL answers an error
    OperationOutcome, a final failure; it is never left answering 202 for good (a job the
    database failed is run again from the start once its lease runs out), never reported
    complete with Patients missing or repeated, and an export asked for after the
    recovery completes meanwhile."""
    outage.recovered()
    jobs = JobStore(Database(schema_url))  # past the proxy: what the gateway stored
    try:
        _idle(jobs)
        with _slow_sources(system):
            status = outage.export()
            job = status.rstrip("/").rsplit("/", 1)[1]
            _claimed(jobs, job)
            time.sleep(CUT_AFTER)
            # cut mid-run: reading the population (its spool made, not yet released) ...
            assert (outage.exports / job / SPOOL).exists()
            (outage.proxy.lose if cut == "lost" else outage.proxy.kill)()
            try:
                # ... and not finished: what it stores from now on is stored after the cut
                stored = jobs.get(job)
                assert stored is not None
                assert stored.status == "running"
                time.sleep(CUT_FOR)
            finally:
                outage.proxy.resume()
    finally:
        jobs.db.dispose()
    outage.recovered()
    fresh = outage.finished(outage.export())
    assert fresh.status_code == 200, fresh.text
    whole = _released_patients(outage, fresh.json())  # now: exports here expire in seconds
    done = outage.finished(status, within=RUN_AGAIN_WITHIN)
    if done.status_code == 200:
        got = _released_patients(outage, done.json())
        assert got.total() == whole.total(), f"{got.total()} Patients, not {whole.total()}"
        assert got == whole
    else:
        assert done.status_code == 500, done.text
        assert done.json()["resourceType"] == "OperationOutcome"
        again = httpx.get(status, headers=outage.analyst(), timeout=15)
        assert again.status_code == 500, "the failure was not final"


#: seconds the commit that records an export complete is held on the server (by a
#: deferred trigger), so its connection can be cut while it commits
COMMIT_HELD = 0.5
#: the commit held, as ``pg_stat_activity`` shows it
HELD_COMMIT = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event = 'PgSleep' AND query = 'COMMIT'"
)


@contextmanager
def _held_completion(db: Database) -> Iterator[Callable[[], None]]:
    """Every commit recording an export complete held ``COMMIT_HELD`` seconds on the
    server (a deferred trigger in this module's schema), until the callable yielded is
    called or the block ends."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION held_completion() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({COMMIT_HELD}); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE CONSTRAINT TRIGGER held_completion AFTER UPDATE ON export_jobs "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'complete') "
                "EXECUTE FUNCTION held_completion()"
            )
        )

    def release() -> None:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS held_completion ON export_jobs"))
            conn.execute(sa.text("DROP FUNCTION IF EXISTS held_completion()"))

    try:
        yield release
    finally:
        release()


def _held_commits(db: Database) -> int:
    """How many commits ``_held_completion`` holds now (read in a transaction of its own:
    a transaction sees one snapshot of ``pg_stat_activity``)."""
    with db.engine.connect() as conn:
        return int(conn.execute(HELD_COMMIT).scalar() or 0)


def _committing(db: Database, within: float = 30) -> None:
    """Return once a commit is held by ``_held_completion``."""
    deadline = time.monotonic() + within
    while not _held_commits(db):
        assert time.monotonic() < deadline, f"no export was recorded complete in {within} s"
        time.sleep(0.01)


@pytest.mark.parametrize("cut", ["lost", "killed"])
def test_an_export_whose_completion_commits_unanswered_ships_its_files(
    outage: Outage, schema_url: str, cut: str
):
    """The commit that records an export complete reaches the database, which commits
    it, but its answer never reaches the gateway: the connection is lost without a word
    or cut while the database commits. The job is complete then, whatever the gateway
    heard: its status answers the manifest, and every file the manifest names is there
    with every Patient once (those of a fresh export), never a complete export whose
    files were deleted."""
    outage.recovered()
    db = Database(schema_url)  # past the proxy
    try:
        _idle(JobStore(db))  # the commit held is this job's
        with _held_completion(db) as release:
            status = outage.export()
            _committing(db)
            (outage.proxy.lose if cut == "lost" else outage.proxy.kill)()
            try:
                while _held_commits(db):
                    time.sleep(0.01)
                release()
                stored = JobStore(db).get(status.rstrip("/").rsplit("/", 1)[1])
                assert stored is not None
                assert stored.status == "complete"  # committed; the gateway heard nothing
            finally:
                outage.proxy.resume()
    finally:
        db.dispose()
    outage.recovered()
    done = outage.finished(status)
    assert done.status_code == 200, done.text
    got = _released_patients(outage, done.json())  # now: exports here expire in seconds
    fresh = outage.finished(outage.export())
    assert fresh.status_code == 200, fresh.text
    assert got == _released_patients(outage, fresh.json())


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


def _ready_route(outage: Outage, known: Known, row: tuple[Any, ...]) -> tuple[str, Ask, Known]:
    """The row's path and request, and ``known`` with what the row needs made first, once
    the route answers as it should before the database is attacked."""
    path, ask, ok, *prepare = row
    for made in prepare:
        known = made(outage, known)
    assert ask(outage, known, 15).status_code == ok
    return path, ask, known


@pytest.mark.parametrize("row", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_frozen_database_costs_each_route_a_prompt_503_and_never_the_server(
    outage: Outage, known: Known, row: tuple[Any, ...]
):
    """With the database frozen (connections open, no byte through), the request is
    refused with a 503 OperationOutcome and Retry-After within the time limits, /livez is
    answered at once meanwhile, and once the database is back the route works again."""
    path, ask, known = _ready_route(outage, known, row)
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
    path, ask, known = _ready_route(outage, known, row)
    took = _refused(outage, known, path, ask, outage.proxy.lose)
    assert took < REFUSED_WITHIN, f"{path} was refused after {took:.2f} s"
    _works_again(outage, known, row)


def _refused(
    outage: Outage, known: Known, path: str, ask: Ask, attack: Callable[[], None]
) -> float:
    """Seconds ``ask`` took to be refused with a 503 after ``attack`` (the proxy resumed
    as soon as the answer came)."""
    attack()
    try:
        answer, took = _timed(lambda: ask(outage, known, REFUSED_WITHIN + 3))
    finally:
        outage.proxy.resume()
    assert answer is not None, f"{path}: no answer within {took:.1f} s"
    assert answer.status_code == 503, answer.text
    return took


#: the writes of the route table, and the table each adds a row to when it takes effect
WRITES = {"consent create": consents, "export kick-off": export_jobs}


@pytest.mark.parametrize("row", [r for r in ROUTES if r[0] in WRITES], ids=list(WRITES))
def test_a_write_refused_while_the_database_is_frozen_never_takes_effect_later(
    outage: Outage, known: Known, schema_url: str, row: tuple[Any, ...]
):
    """A write the gateway answered with a 503 was not made, and must not be made once
    the database answers again: the client is told to try again, and a write that took
    effect after all would be made twice (a Consent stored twice, an export run for
    nobody). The database is frozen while the write waits for it, and let go as soon as
    the 503 is out: the statement it had sent arrives then, within the gateway's own
    bound for the call."""
    path, ask, known = _ready_route(outage, known, row)
    direct = Database(schema_url)  # past the proxy

    def rows() -> int:
        with direct.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(WRITES[path])).scalar_one()
            )

    try:
        before = rows()
        _refused(outage, known, path, ask, outage.proxy.freeze)
        time.sleep(2 * DB_TIMEOUT + 2)  # past every bound of the call the 503 gave up on
        assert rows() == before, f"{path} answered 503, and was made after all"
    finally:
        direct.dispose()
    _works_again(outage, known, row)
