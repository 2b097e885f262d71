"""Bulk Data ``$export`` through a real gateway process, its simulators and real tokens.

Backend tokens here are what the gateway's token endpoint mints (its own issuer, the
registered client's id, scope and purpose), so each client's registered data-sharing
agreement applies; the real Bulk Data clients get theirs at the token endpoint itself.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from joserfc.jwk import KeySet, RSAKey

from carelink.anonymise.keys import ProjectKeys
from carelink.auth import Principal
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.export.jobs import JobRequest
from carelink.export.spec import ExtractSpec
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.storage import Database, JobStore, OptOutStore
from tests.integration.conftest import System
from tests.support.consents import privacy_consent
from tests.support.gateways import Started, copy_index, token_gateways
from tests.support.procs import carelink
from tests.support.schema import problems
from tests.support.tokens import Issuer

ANALYST = "population-health"  # registered for pseudonymised extracts
DASHBOARDS = "dashboards"  # registered with no profile named: anonymised only
SMART_FETCH_CLIENT = "bulk-client"  # registered for pseudonymised extracts
SMART_BULK_CLIENT = "smart-bulk-data-client"  # registered for anonymised extracts
BULK_KEY = RSAKey.generate_key(2048, parameters={"kid": "bulk-1"})
PCN, PCN_PRACTICES = "U86001", ["B86000", "B86001"]
JS = Path(__file__).parents[1] / "js"


@dataclass
class Exporter:
    base: str
    issuer: Issuer  # the external issuer: clinicians' tokens
    local: LocalIssuer  # the gateway's own issuer: backend-services tokens
    db: Path
    opted_out: dict[str, str]  # NHS number -> kind
    env: dict[str, str]

    @classmethod
    def of(
        cls, gateway: Started, issuer: Issuer, db: Path, tmp: Path, opted: dict[str, str]
    ) -> Exporter:
        """For a gateway from ``token_gateways`` (its issuer keys under ``tmp``)."""
        local = LocalIssuer(tmp / "local-issuer")
        return cls(gateway.base, issuer, local, db, opted, gateway.env)

    def token(self, sub: str = ANALYST, **claims: Any) -> str:
        """A backend-services token for client ``sub``, as the token endpoint mints it."""
        claims.setdefault("scope", "system/*.rs")
        claims.setdefault("purpose_of_use", "HRESCH")
        claims.setdefault("client_id", sub)  # a backend-services token: the client is the caller
        return self.local.mint(self.base, {"sub": sub, **claims}, lifetime=600)

    def external_backend_token(self, sub: str = ANALYST) -> str:
        """A backend-services token from the external issuer: no registration here."""
        return self.issuer.token(
            aud=self.base,
            sub=sub,
            client_id=sub,
            role=None,
            organisation=None,
            scope="system/*.rs",
            purpose_of_use="HRESCH",
        )

    def kick_off(
        self, path: str = "/$export", token: str | None = None, **params: Any
    ) -> httpx.Response:
        """The kick-off, asked again after a 503's ``Retry-After`` (at most twice more), as
        a Bulk Data client does: an overloaded machine's database call past its bound is
        answered so, by design (seen at load 8-10 on two cores)."""
        for _ in range(2):
            r = self._kick_off(path, token, params)
            if r.status_code != 503 or "Retry-After" not in r.headers:
                return r
            time.sleep(min(5.0, float(r.headers["Retry-After"])))
        return self._kick_off(path, token, params)

    def _kick_off(self, path: str, token: str | None, params: dict[str, Any]) -> httpx.Response:
        return httpx.get(
            f"{self.base}{path}",
            params=params,
            headers={
                "Authorization": f"Bearer {token or self.token()}",
                "Prefer": "respond-async",
                "Accept": "application/fhir+json",
            },
            timeout=15,
        )

    def wait(self, status_url: str, token: str | None = None, limit: float = 120) -> httpx.Response:
        deadline = time.monotonic() + limit
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        while time.monotonic() < deadline:
            r = httpx.get(status_url, headers=headers, timeout=15)
            if r.status_code != 202:
                return r
            assert "X-Progress" in r.headers
            assert r.headers["Retry-After"] == "1"
            time.sleep(0.1)  # faster than asked: the test waits for nothing else
        raise AssertionError("the export did not finish")

    def completed(self, path: str = "/$export", **params: Any) -> dict[str, Any]:
        """Kick off, wait for it to finish (200), and return the manifest."""
        kick = self.kick_off(path, **params)
        assert kick.status_code == 202, kick.text
        done = self.wait(kick.headers["Content-Location"])
        assert done.status_code == 200, done.text
        return dict(done.json())

    def files(self, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Each output file's resources, by type."""
        return {o["type"]: ndjson(self.download(o["url"])) for o in manifest["output"]}

    def keys(self, project: str = ANALYST) -> ProjectKeys:
        """A project's keys (from the master key the gateway made); a client's project
        is its client id."""
        master = (self.db.parent / "extract-master.key").read_bytes()
        return ProjectKeys.for_project(master, project)

    def download(self, url: str, token: str | None = None) -> httpx.Response:
        return httpx.get(
            url, headers={"Authorization": f"Bearer {token or self.token()}"}, timeout=30
        )


@pytest.fixture(scope="module")
def exporter(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "shared.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    opted = {p.nhs_number: "ndop" for p in system.population[::17]}
    opted |= {p.nhs_number: "type1" for p in system.population[5::29]}
    database = Database(str(db))
    database.migrate()
    OptOutStore(database).load([(n, k) for n, k in opted.items()], "2026-11-23")
    # A job accepted before this gateway started: it must still run (jobs survive restarts).
    analyst = Principal(ANALYST, None, None, frozenset(), issuer=LOCAL_ISSUER, client_id=ANALYST)
    JobStore(database).create(
        "left-over",
        analyst.identity,  # jobs are bound to the full identity that asked
        JobRequest(
            ExtractSpec(ANALYST, "pseudonymised", frozenset({"Patient"})), "x", "ndjson"
        ).to_bytes(),
        time.time(),
    )
    database.dispose()
    issuer = Issuer()
    clients = tmp / "clients.json"
    public = KeySet([BULK_KEY]).as_dict(private=False)
    registered = {"jwks": public, "scope": "system/*.rs", "purpose": "HRESCH"}
    clients.write_text(
        json.dumps(
            [
                {"client_id": ANALYST, "deid_profile": "pseudonymised", **registered},
                {"client_id": DASHBOARDS, **registered},
                {"client_id": SMART_FETCH_CLIENT, "deid_profile": "pseudonymised", **registered},
                {"client_id": SMART_BULK_CLIENT, "deid_profile": "anonymised", **registered},
            ]
        )
    )
    pcns = tmp / "pcns.json"
    pcns.write_text(json.dumps({PCN: {"name": "North PCN", "practices": PCN_PRACTICES}}))
    extra = {"CARELINK_CLIENTS": str(clients), "CARELINK_PCNS": str(pcns)}
    with token_gateways(system.env, db, issuer, tmp, extra=extra) as (gateway,):
        yield Exporter.of(gateway, issuer, db, tmp, opted)


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def _pseudonyms(patients: list[dict[str, Any]]) -> set[str]:
    """The NHS-number pseudonyms the extracted Patients carry."""
    return {
        i["value"] for p in patients for i in p.get("identifier", []) if "pseudonym" in i["system"]
    }


def _patient(base: str, token: str, nhs_number: str) -> dict[str, Any]:
    """The gateway's merged Patient for an NHS number."""
    found = httpx.get(
        f"{base}/Patient",
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs_number}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    ).json()
    return dict(found["entry"][0]["resource"])


def _record_consent(base: str, token: str, patient_id: str, provision: dict[str, Any]) -> str:
    """Record an active privacy Consent through the API; its id."""
    body = privacy_consent(patient_id, provision)
    stored = httpx.post(
        f"{base}/Consent",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=15,
    )
    assert stored.status_code == 201, stored.text
    return str(stored.json()["id"])


def _withdraw(base: str, token: str, consent_id: str) -> None:
    gone = httpx.delete(
        f"{base}/Consent/{consent_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert gone.status_code in (200, 204)


def test_a_job_accepted_before_a_restart_still_runs(exporter):
    done = exporter.wait(f"{exporter.base}/$export-status/left-over")
    assert done.status_code == 200, done.text
    assert [o["type"] for o in done.json()["output"]] == ["Patient"]


def test_a_pseudonymised_export_leaves_out_opted_out_people_and_keeps_links(exporter, system):
    """The client names no profile: its registration's agreement (pseudonymised) applies."""
    manifest = exporter.completed(_type="Patient,Condition")
    assert manifest["requiresAccessToken"] is True
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Condition"}
    excluded = manifest["extension"]["carelink"]["optOutsExcluded"]
    assert set(excluded) == {"ndop", "type1"}
    files = exporter.files(manifest)
    assert all(len(files[o["type"]]) == o["count"] for o in manifest["output"])
    # Pseudonyms are the project's keyed hashes of the NHS number.
    keys = exporter.keys()
    shown = _pseudonyms(files["Patient"])
    in_index = [p for p in system.population if p.social_variant is None or "gp" in p.sources]
    for person in in_index:
        pseudonym = keys.nhs_pseudonym(person.nhs_number)
        assert (pseudonym in shown) is (person.nhs_number not in exporter.opted_out)
    text = json.dumps(files)
    assert not any(p.nhs_number in text for p in system.population)
    assert not any(p.family in text for p in system.population if len(p.family) > 3)
    # References between the extract's resources still resolve.
    patient_ids = {p["id"] for p in files["Patient"]}
    assert {c["subject"]["reference"].split("/")[-1] for c in files["Condition"]} <= patient_ids


def _job_profile(exporter: Exporter, kick: httpx.Response) -> str:
    """The profile the kick-off's job was stored with (what the runner will extract)."""
    assert kick.status_code == 202, kick.text
    job_id = kick.headers["Content-Location"].rsplit("/", 1)[1]
    database = Database(str(exporter.db))
    row = JobStore(database).get(job_id)
    database.dispose()
    assert row is not None
    cancel = httpx.delete(
        kick.headers["Content-Location"],
        headers={"Authorization": kick.request.headers["Authorization"]},
    )
    assert cancel.status_code == 202  # the job itself is not needed
    return JobRequest.from_bytes(row.request).spec.profile


@pytest.mark.parametrize(
    ("client", "asked", "gets"),
    [
        (ANALYST, None, "pseudonymised"),  # the agreement, with no carelink parameter
        (ANALYST, "pseudonymised", "pseudonymised"),
        (ANALYST, "anonymised", "anonymised"),  # less identifying than agreed: allowed
        (DASHBOARDS, None, "anonymised"),  # a registration naming no profile
        (DASHBOARDS, "anonymised", "anonymised"),
        ("not-registered", None, "anonymised"),  # a token of the gateway's, no agreement
    ],
)
def test_a_kick_off_gets_the_profile_its_registration_agreed_or_a_less_identifying_one(
    exporter, client, asked, gets
):
    params = {"profile": asked} if asked else {}
    kick = exporter.kick_off(token=exporter.token(client), _type="Patient", **params)
    assert _job_profile(exporter, kick) == gets


@pytest.mark.parametrize("client", [DASHBOARDS, "not-registered", "external"])
def test_a_profile_more_identifying_than_the_agreement_is_refused(exporter, client):
    """Anonymised-only agreements, no registration here (a token of the gateway's own, or
    an external issuer's backend token): never pseudonymised."""
    token = exporter.external_backend_token() if client == "external" else exporter.token(client)
    kick = exporter.kick_off(token=token, _type="Patient", profile="pseudonymised")
    assert kick.status_code == 403, kick.text
    outcome = kick.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert (
        "more identifying than this client's data-sharing agreement (anonymised)"
        in (outcome["issue"][0]["diagnostics"])
    )


def test_an_unknown_profile_is_a_bad_request(exporter):
    kick = exporter.kick_off(_type="Patient", profile="raw")
    assert kick.status_code == 400
    assert "profile must be one of" in kick.json()["issue"][0]["diagnostics"]


def test_an_anonymised_practice_export_is_k_anonymous_and_holds_no_identifiers(exporter, system):
    practice = system.population[0].gp_ods
    manifest = exporter.completed(
        f"/Group/practice-{practice}/$export",
        _type="Patient,Observation",
        k=3,
        profile="anonymised",  # less identifying than the client's agreement: allowed
    )
    risk = manifest["extension"]["carelink"]["risk"]
    assert risk["met"] is True
    assert risk["smallest_class"] >= 3
    files = exporter.files(manifest)
    patients = files["Patient"]
    classes: dict[tuple[Any, ...], int] = {}
    for p in patients:
        key = (p.get("gender"), json.dumps(p.get("extension")), json.dumps(p.get("address")))
        classes[key] = classes.get(key, 0) + 1
        assert "birthDate" not in p
        assert "name" not in p
        assert "identifier" not in p
    assert min(classes.values()) >= 3
    text = json.dumps(files)
    members = [p for p in system.population if p.gp_ods == practice]
    for p in members:
        assert p.nhs_number not in text
        assert p.postcode not in text
        assert p.birth_date.isoformat() not in text
        assert p.phone not in text
    assert "ANONYED" in text


def test_an_extract_below_its_k_threshold_is_refused(exporter, system):
    practice = system.population[0].gp_ods
    kick = exporter.kick_off(
        f"/Group/practice-{practice}/$export", _type="Patient", k=1000, profile="anonymised"
    )
    done = exporter.wait(kick.headers["Content-Location"])
    assert done.status_code == 500
    outcome = done.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "REFUSED" in outcome["issue"][0]["diagnostics"]


def test_parquet_output(exporter):
    kick = exporter.kick_off(_type="Patient", _outputFormat="application/vnd.apache.parquet")
    done = exporter.wait(kick.headers["Content-Location"])
    assert done.status_code == 200, done.text
    (out,) = done.json()["output"]
    got = exporter.download(out["url"])
    assert got.headers["content-type"].startswith("application/vnd.apache.parquet")
    path = exporter.db.parent / "p.parquet"
    path.write_bytes(got.content)
    frame = pd.read_parquet(path)
    assert len(frame) == out["count"]
    assert "gender" in frame.columns


def test_cancel_files_only_for_their_client_and_the_rules_of_kick_off(exporter):
    kick = exporter.kick_off(_type="Patient")
    status = kick.headers["Content-Location"]
    other = exporter.token(sub="someone-else")
    assert httpx.get(status, headers={"Authorization": f"Bearer {other}"}).status_code == 404
    done = exporter.wait(status)
    url = done.json()["output"][0]["url"]
    assert exporter.download(url, other).status_code == 404
    assert exporter.download(url).status_code == 200
    cancel = httpx.delete(status, headers={"Authorization": f"Bearer {exporter.token()}"})
    assert cancel.status_code == 202
    gone = httpx.get(status, headers={"Authorization": f"Bearer {exporter.token()}"})
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert exporter.download(url).status_code == 404
    # Kick-off rules.
    no_prefer = httpx.get(
        f"{exporter.base}/$export", headers={"Authorization": f"Bearer {exporter.token()}"}
    )
    assert no_prefer.status_code == 400
    clinician = exporter.issuer.token(aud=exporter.base)  # user scopes, purpose TREAT
    assert exporter.kick_off(token=clinician).status_code == 403
    treat = exporter.token(purpose_of_use="TREAT")
    assert exporter.kick_off(token=treat).status_code == 403
    narrow = exporter.token(scope="system/Patient.rs")
    assert exporter.kick_off(token=narrow, _type="Condition").status_code == 403
    assert exporter.kick_off(_type="Nonsense").status_code == 400
    assert exporter.kick_off(_outputFormat="text/csv").status_code == 400


def test_the_command_line_extract_writes_parquet_tables_a_dictionary_and_a_risk_report(
    exporter, system, tmp_path
):
    csv = tmp_path / "optouts.csv"
    csv.write_text(f"nhs_number,kind\n{system.population[1].nhs_number},ndop\n")
    loaded = carelink(["optout", "load", str(csv)], exporter.env)
    assert loaded.returncode == 0, loaded.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("9434765918,ndop\n")
    refused = carelink(["optout", "load", str(bad)], exporter.env)
    assert refused.returncode != 0
    assert "not an NHS number" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    out = tmp_path / "extract"
    practice = system.population[0].gp_ods
    args = ["extract", "--project", "atlas", "--out", str(out), "--group", f"practice-{practice}"]
    done = carelink([*args, "--type", "Patient", "--type", "Condition", "--k", "3"], exporter.env)
    assert done.returncode == 0, done.stderr
    patients = pd.read_parquet(out / "Patient.parquet")
    assert len(patients) > 0
    assert "birthDate" not in patients.columns
    dictionary = json.loads((out / "dictionary.json").read_text())
    assert {d["table"] for d in dictionary} == {"Patient", "Condition"}
    assert "smallest" in (out / "risk.txt").read_text()
    text = (out / "ndjson" / "Patient.ndjson").read_text()
    assert not any(p.nhs_number in text for p in system.population)
    # The Bulk Data filters, at the command line too.
    filtered = tmp_path / "filtered"
    args = ["extract", "--project", "atlas", "--profile", "pseudonymised", "--out", str(filtered)]
    only = carelink(
        [*args, "--type", "Condition", "--type-filter", "Condition?code=38341003"], exporter.env
    )
    assert only.returncode == 0, only.stderr
    conditions = pd.read_parquet(filtered / "Condition.parquet")
    assert len(conditions) > 0
    assert set(conditions["code.coding.0.code"]) == {"38341003"}
    bad = carelink([*args, "--since", "last tuesday"], exporter.env)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "--since 'last tuesday' is not a FHIR date or dateTime" in bad.stderr


def _signing_jwks(path: Path) -> dict[str, Any]:
    """The registered key as a client holds it: a private JWK for RS384 signing."""
    private = KeySet([BULK_KEY]).as_dict(private=True)
    for k in private["keys"]:
        k.update(alg="RS384", key_ops=["sign"])
    path.write_text(json.dumps(private))
    return private


def _downloaded(folder: Path, rtype: str) -> list[dict[str, Any]]:
    """The resources of one type a client wrote, as NDJSON (gzipped or not), in any number
    of files (``Patient.ndjson``, ``Patient.000.ndjson.gz``, ``1.Patient.ndjson`` ...)."""
    out = []
    for f in sorted(folder.rglob("*.ndjson*")):
        if rtype not in f.name.split("."):
            continue
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        out += [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return out


def test_smart_fetch_exports_under_its_registered_agreement_with_its_default_options(
    exporter, system, tmp_path
):
    """smart-fetch (a maintained Bulk Data client) gets a token with a private_key_jwt
    assertion, kicks off, polls, downloads and cleans up, as any analyst's tool would.
    It knows no carelink parameter: the pseudonymised extract comes from its registration."""
    key = tmp_path / "key.jwks"
    _signing_jwks(key)
    out = tmp_path / "bulk"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "smart-fetch"),
            "bulk",
            str(out),
            "--fhir-url",
            exporter.base,
            "--smart-client-id",
            SMART_FETCH_CLIENT,
            "--smart-key",
            str(key),
            "--type",
            "Patient,Condition",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    patients = _downloaded(out, "Patient")
    assert patients
    assert _downloaded(out, "Condition")
    # Pseudonymised for the client's own project: its keyed hashes of NHS numbers.
    keys = exporter.keys(SMART_FETCH_CLIENT)
    everyone = {keys.nhs_pseudonym(p.nhs_number) for p in system.population}
    shown = _pseudonyms(patients)
    assert shown
    assert shown <= everyone
    assert len(shown) == len(patients)
    text = json.dumps(patients)
    assert not any(p.nhs_number in text for p in system.population)


def _bulk_data_client() -> tuple[str, Path] | None:
    """node and the SMART bulk-data-client's folder (its ``built/app.js`` and installed
    dependencies): ``CARELINK_BULK_DATA_CLIENT``, else ``tests/js/node_modules``."""
    node = shutil.which("node")
    folder = Path(
        os.environ.get("CARELINK_BULK_DATA_CLIENT", JS / "node_modules" / "bulk-data-client")
    )
    if node is None or not (folder / "built" / "app.js").is_file():
        return None
    return node, folder


BULK_DATA_CLIENT_ABSENT = (
    "the SMART bulk-data-client (github.com/smart-on-fhir/bulk-data-client) is not installed: "
    "it is not published on the npm registry, so tests/js cannot pin it. Point "
    "CARELINK_BULK_DATA_CLIENT at a copy of its repository in which `npm install --omit=dev "
    "--engine-strict=false` has been run. Its assertion timing is reproduced without it in "
    "tests/auth/test_backend_services.py"
)


@pytest.mark.skipif(_bulk_data_client() is None, reason=BULK_DATA_CLIENT_ABSENT)
def test_the_smart_bulk_data_client_exports_a_group_under_its_registered_agreement(
    exporter, system, tmp_path
):
    """The SMART reference client, from a config file: its own assertion (exp rounded, then
    exactly five minutes on), a group kick-off with no carelink parameter, polling and
    downloads; what it writes is the anonymised extract of the practice's patients."""
    found = _bulk_data_client()
    assert found is not None
    node, folder = found
    practice = system.population[0].gp_ods
    out = tmp_path / "downloads"
    out.mkdir()
    private = _signing_jwks(tmp_path / "key.jwks")
    config = tmp_path / "bulk-data-client.json"
    config.write_text(
        json.dumps(
            {
                "fhirUrl": exporter.base,
                "tokenUrl": exporter.base.removesuffix("/fhir") + "/auth/token",
                "clientId": SMART_BULK_CLIENT,
                "privateKey": private["keys"][0],
                "scope": "system/*.rs",
                "group": f"practice-{practice}",
                "_type": "Patient,Condition",
                "destination": str(out),
                "reporter": "text",
                "log": {"enabled": False},
                "parallelDownloads": 2,
            }
        )
    )
    app = str(folder / "built" / "app.js")
    runs = []
    for _ in range(2):  # each run signs a fresh assertion at a different part of a second
        done = subprocess.run(
            [node, "-r", str(JS / "no_keepalive.cjs"), app, "--config", str(config)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(_downloaded(out, "Patient"))
        assert _downloaded(out, "Condition"), (sorted(out.rglob("*")), done.stdout[-3000:])
        for f in out.rglob("*.ndjson*"):
            f.unlink()
    patients = runs[0]
    assert patients
    members = [p for p in system.population if p.gp_ods == practice]
    assert len(patients) <= len(members)
    for p in patients:  # the anonymised profile: no identifiers, names or birth dates
        assert "identifier" not in p
        assert "name" not in p
        assert "birthDate" not in p
    text = json.dumps(runs)
    assert not any(p.nhs_number in text for p in members)


EXCLUDED_CODES = {"86406008", "105629000"}  # HIV, chlamydia: categories kept out of extracts


def _codes(r: dict[str, Any]) -> set[str]:
    return {c.get("code") for c in (r.get("code") or {}).get("coding", [])}


def test_categories_the_policy_keeps_out_of_secondary_use_are_never_extracted(exporter):
    manifest = exporter.completed(_type="Condition,Flag", profile="pseudonymised")
    consent = manifest["extension"]["carelink"]["consent"]
    assert consent["sensitiveCategoriesWithheld"] != "0"  # the population has some
    files = [r for rs in exporter.files(manifest).values() for r in rs]
    assert files
    for r in files:
        assert not _codes(r) & EXCLUDED_CODES
        labels = {s.get("code") for s in r.get("meta", {}).get("security", [])}
        assert not labels & {"HIV", "STD", "SEX", "SDV", "GENDER"}


def test_a_condition_cohort_is_k_anonymous_over_its_members(exporter):
    manifest = exporter.completed(
        "/Group/condition-38341003/$export", _type="Patient,Condition", k=2, profile="anonymised"
    )
    risk = manifest["extension"]["carelink"]["risk"]
    assert risk["met"] is True
    assert risk["smallest_class"] >= 2
    files = exporter.files(manifest)
    by_subject: dict[str, set[str]] = {}
    for c in files["Condition"]:
        by_subject.setdefault(c["subject"]["reference"], set()).update(_codes(c))
    assert by_subject
    assert all("38341003" in codes for codes in by_subject.values())
    assert len(files["Patient"]) == len(by_subject)


def test_a_cohort_whose_membership_would_disclose_an_excluded_category_is_refused(exporter):
    kick = exporter.kick_off("/Group/condition-86406008/$export", _type="Patient")
    assert kick.status_code == 403
    assert "keeps out of secondary use" in kick.json()["issue"][0]["diagnostics"]


def test_an_objection_keeps_a_person_out_of_pseudonymised_extracts_only(exporter, system):
    person = next(
        p
        for p in system.population[2:]  # population[1] is opted out by the command-line test
        if "gp" in p.sources and p.nhs_number not in exporter.opted_out
    )
    clinician = exporter.issuer.token(aud=exporter.base, scope="user/*.cruds", role="R0001")
    pid = _patient(exporter.base, clinician, person.nhs_number)["id"]
    consent_id = _record_consent(exporter.base, clinician, pid, {"type": "deny"})
    try:
        pseudonym = exporter.keys().nhs_pseudonym(person.nhs_number)
        manifest = exporter.completed(_type="Patient", profile="pseudonymised")
        objections = manifest["extension"]["carelink"]["consent"]["objections"]
        assert objections["resourcesWithheld"] != "0"
        assert pseudonym not in json.dumps(exporter.files(manifest))
        anonymised = exporter.completed(_type="Patient", profile="anonymised")
        note = anonymised["extension"]["carelink"]["consent"]["objections"]
        assert note == "not applied to anonymised extracts by the policy"
    finally:
        _withdraw(exporter.base, clinician, consent_id)


def test_a_pcn_cohort_holds_exactly_its_practices_registered_patients(exporter, system):
    assert {p.gp_ods for p in system.population} >= set(PCN_PRACTICES)
    manifest = exporter.completed(
        f"/Group/pcn-{PCN}/$export", _type="Patient", profile="pseudonymised"
    )
    shown = _pseudonyms(exporter.files(manifest)["Patient"])
    keys = exporter.keys()
    database = Database(str(exporter.db))
    opted_out = OptOutStore(database).all()  # as loaded, by the fixture and the command line
    database.dispose()
    assert opted_out
    expected = {
        keys.nhs_pseudonym(p.nhs_number)
        for p in system.population
        if p.gp_ods in PCN_PRACTICES and p.nhs_number not in opted_out
    }
    assert shown == expected
    unknown = exporter.kick_off("/Group/pcn-U99999/$export")
    assert unknown.status_code == 404
    assert "not a configured PCN" in unknown.json()["issue"][0]["diagnostics"]


def test_where_the_policy_applies_objections_to_anonymised_extracts_k_covers_what_is_left(
    system, tmp_path
):
    policy = json.loads((Path(__file__).parents[2] / "consent" / "policy.json").read_text())
    policy["secondaryUseObjections"] = "all"
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    db = tmp_path / "own.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    issuer = Issuer()
    extra = {"CARELINK_CONSENT_POLICY": str(tmp_path / "policy.json")}
    with token_gateways(system.env, db, issuer, tmp_path, extra=extra) as (gateway,):
        exporter = Exporter.of(gateway, issuer, db, tmp_path, {})
        clinician = issuer.token(aud=gateway.base, scope="user/*.cruds", role="R0001")
        practice = system.population[0].gp_ods
        objectors = [p for p in system.population if p.gp_ods == practice][:4]
        for person in objectors:
            pid = _patient(gateway.base, clinician, person.nhs_number)["id"]
            _record_consent(gateway.base, clinician, pid, {"type": "deny"})
        manifest = exporter.completed(f"/Group/practice-{practice}/$export", _type="Patient", k=2)
        carelink_part = manifest["extension"]["carelink"]
        assert carelink_part["consent"]["objections"]["resourcesWithheld"] != "0"
        (out,) = manifest["output"]
        patients = ndjson(exporter.download(out["url"]))
        # The report is of what was released, not of what was planned before consent.
        assert carelink_part["risk"]["records_out"] == len(patients) == out["count"]
        assert carelink_part["risk"]["smallest_class"] >= 2


def test_an_unknown_group_says_nothing_to_a_caller_without_a_token(exporter):
    anonymous = httpx.get(
        f"{exporter.base}/Group/pcn-U99999/$export", headers={"Prefer": "respond-async"}
    )
    assert anonymous.status_code == 401
    assert "PCN" not in anonymous.text


def test_a_source_the_consent_keeps_out_leaves_no_trace_on_the_extracted_patient(exporter, system):
    """An objection to social care's data: the pseudonymised Patient must not even carry
    social care's (hashed) local identifier, which would show the person is known there."""
    from carelink.sources.base import local_id_system

    person = next(
        p
        for p in reversed(system.population)
        if {"gp", "social-care"} <= set(p.sources)
        and p.social_variant is None
        and p.nhs_number not in exporter.opted_out
    )
    clinician = exporter.issuer.token(aud=exporter.base, scope="user/*.cruds", role="R0001")
    patient = _patient(exporter.base, clinician, person.nhs_number)
    social = local_id_system("social-care")
    assert any(i["system"] == social for i in patient["identifier"])  # known there
    custodian = {
        "role": {"coding": [{"code": "CST"}]},
        "reference": {
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": "LSC00",
            }
        },
    }
    consent_id = _record_consent(
        exporter.base, clinician, patient["id"], {"type": "deny", "actor": [custodian]}
    )
    try:
        pseudonym = exporter.keys().nhs_pseudonym(person.nhs_number)
        manifest = exporter.completed(_type="Patient", profile="pseudonymised")
        mine = [p for p in exporter.files(manifest)["Patient"] if _pseudonyms([p]) == {pseudonym}]
        assert len(mine) == 1  # still extracted: only social care's part is objected to
        assert all(i["system"] != social for i in mine[0]["identifier"])
    finally:
        _withdraw(exporter.base, clinician, consent_id)


def test_a_source_that_cannot_be_read_is_reported_not_silently_missing(exporter, system):
    system.faults("acute", down=True)
    try:
        kick = exporter.kick_off(_type="Patient,Encounter", profile="pseudonymised")
        done = exporter.wait(kick.headers["Content-Location"])
    finally:
        system.heal()
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert set(manifest["extension"]["carelink"]["incompleteSources"]) == {"acute"}
    (error,) = manifest["error"]
    assert error["type"] == "OperationOutcome"
    (outcome,) = ndjson(exporter.download(error["url"]))
    text = outcome["issue"][0]["diagnostics"]
    # How many, under the small-number rule, and nobody named.
    assert re.match(r"source acute could not be read for (\*|[0-9]*[05]) of the extract's", text)
    # The other sources' data is all there.
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Encounter"}
    healthy = exporter.completed(_type="Patient", profile="pseudonymised")
    assert healthy["error"] == []
    assert "incompleteSources" not in healthy["extension"]["carelink"]


def test_exports_are_deleted_after_their_retention_time(system, tmp_path):
    db = tmp_path / "own.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    issuer = Issuer()
    # 7.2 s (swept every 3.6 s): time enough to finish and download the export first
    extra = {"CARELINK_EXPORT_TTL_HOURS": "0.002"}
    with token_gateways(system.env, db, issuer, tmp_path, extra=extra) as (gateway,):
        exporter = Exporter.of(gateway, issuer, db, tmp_path, {})
        kick = exporter.kick_off(_type="Patient")
        assert "Content-Location" in kick.headers, (kick.status_code, kick.text)
        done = exporter.wait(kick.headers["Content-Location"])
        assert done.status_code == 200, done.text
        assert "Expires" in done.headers
        url = done.json()["output"][0]["url"]
        assert exporter.download(url).status_code == 200
        job = kick.headers["Content-Location"].rsplit("/", 1)[1]
        files = tmp_path / "exports" / job
        assert files.is_dir()
        deadline = time.monotonic() + 40
        while files.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not files.exists()
        gone = httpx.get(
            kick.headers["Content-Location"],
            headers={"Authorization": f"Bearer {exporter.token()}"},
        )
        assert gone.status_code == 404
        assert exporter.download(url).status_code == 404
        database = Database(str(db))
        row = JobStore(database).get(job)
        database.dispose()
        assert row is not None
        assert (row.status, row.manifest) == ("expired", None)


def test_an_export_asked_for_long_before_it_finished_is_kept_from_when_it_finished(
    system, tmp_path
):
    """An extract that runs longer than the retention time must not expire as it
    finishes: its status, its ``Expires`` and its files count from when it finished.
    The job is made to look as if it was asked for an hour before it finished (its
    ``created`` moved back in the database); anything counting from ``created`` answers
    404 at once, and the sweep deletes its files."""
    db = tmp_path / "own.db"
    copy_index(system.env["CARELINK_DATABASE_URL"], db)
    issuer = Issuer()
    ttl = 0.006 * 3600  # 21.6 s, swept every 10.8 s
    extra = {"CARELINK_EXPORT_TTL_HOURS": "0.006"}
    with token_gateways(system.env, db, issuer, tmp_path, extra=extra) as (gateway,):
        exporter = Exporter.of(gateway, issuer, db, tmp_path, {})
        kick = exporter.kick_off(_type="Patient")
        assert "Content-Location" in kick.headers, (kick.status_code, kick.text)
        status_url = kick.headers["Content-Location"]
        assert exporter.wait(status_url).status_code == 200
        job = status_url.rsplit("/", 1)[1]
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE export_jobs SET created = created - 3600 WHERE id = ?", (job,))
        database = Database(str(db))
        row = JobStore(database).get(job)
        database.dispose()
        assert row is not None
        assert row.finished is not None
        assert row.created < row.finished - 3000
        time.sleep(ttl / 2 + 1.5)  # a sweep has run since
        done = httpx.get(status_url, headers={"Authorization": f"Bearer {exporter.token()}"})
        assert done.status_code == 200, done.text
        expires = parsedate_to_datetime(done.headers["Expires"]).timestamp()
        assert abs(expires - (row.finished + ttl)) <= 1.0  # HTTP dates are in whole seconds
        assert (tmp_path / "exports" / job).is_dir()
        assert exporter.download(done.json()["output"][0]["url"]).status_code == 200


def test_a_cohort_refused_at_record_level_gets_aggregate_tables_that_cannot_be_differenced(
    exporter, system
):
    practice = system.population[0].gp_ods
    refused = exporter.kick_off(
        f"/Group/practice-{practice}/$export", _type="Patient", k=1000, profile="anonymised"
    )
    outcome = exporter.wait(refused.headers["Content-Location"]).json()
    assert "profile=aggregate" in outcome["issue"][0]["diagnostics"]
    manifest = exporter.completed(
        f"/Group/practice-{practice}/$export", _type="Patient,Condition", profile="aggregate"
    )
    carelink_part = manifest["extension"]["carelink"]
    assert carelink_part["people"] == "*" or int(carelink_part["people"]) % 5 == 0
    assert "not applied" in carelink_part["optOutsExcluded"]
    (out,) = manifest["output"]
    assert out["type"] == "MeasureReport"
    reports = ndjson(exporter.download(out["url"]))
    assert len(reports) > 1  # the cohort, then one per coded fact
    counts = []
    for report in reports:
        assert report["type"] == "summary"
        assert problems(report) == []  # valid R4
        group = report["group"][0]
        for pop in [
            *group["population"],
            *(p for s in group["stratifier"][0]["stratum"] for p in s["population"]),
        ]:
            if "count" in pop:
                counts.append(pop["count"])
            else:
                assert pop["extension"][0]["valueString"] == "1 to 7"
    assert counts
    # Every count published is 0-free, a multiple of 5 and never 1 to 7: no exact total
    # sits beside a suppressed cell.
    assert all(c % 5 == 0 and c >= 10 for c in counts)
    text = json.dumps(reports)
    for p in system.population:
        if p.gp_ods == practice:
            assert p.nhs_number not in text
            assert p.postcode not in text
