"""The ``carelink`` command: one-line errors and documented exit codes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from carelink import __version__ as carelink_version
from carelink.auth.tokens import TokenPolicy, load_keys, validate
from carelink.storage.migrations import MIGRATIONS
from tests.support.procs import carelink, env, free_port, own_files


def _settings(tmp_path: Path) -> dict[str, str]:
    """Settings naming files under ``tmp_path`` only."""
    var = tmp_path / "var"
    return {"CARELINK_DATABASE_URL": str(var / "carelink.db"), **own_files(var)}


def _one_line(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code`` and exactly one line on stderr that says ``words``."""
    assert r.returncode == code, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_token_mint_prints_a_token_the_gateway_would_accept(tmp_path):
    keys = tmp_path / "issuer"
    made = carelink(["init"], {**_settings(tmp_path), "CARELINK_ISSUER_KEYS": str(keys)})
    assert made.returncode == 0, made.stderr
    r = carelink(
        [
            "token",
            "mint",
            "--keys",
            str(keys),
            "--audience",
            "http://gw/fhir",
            "--role",
            "R8001",
            "--purpose",
            "ETREAT",
        ]
    )
    assert r.returncode == 0, r.stderr
    keyset = load_keys(str(keys / "jwks.json"))
    policy = TokenPolicy({"urn:carelink:local-issuer": keyset}, "http://gw/fhir")
    caller = validate(r.stdout.strip(), policy)
    assert (caller.role, caller.purpose) == ("R8001", "ETREAT")


def test_token_mint_uses_the_gateways_issuer_keys_and_audience(tmp_path):
    env = {**_settings(tmp_path), "CARELINK_AUDIENCE": "https://gw.example/fhir"}
    assert carelink(["init"], env).returncode == 0
    r = carelink(["token", "mint"], env)
    assert r.returncode == 0, r.stderr
    keyset = load_keys(str(tmp_path / "var" / "issuer" / "jwks.json"))
    policy = TokenPolicy({"urn:carelink:local-issuer": keyset}, "https://gw.example/fhir")
    assert validate(r.stdout.strip(), policy).role == "R8000"


def test_token_mint_never_makes_a_key(tmp_path):
    r = carelink(["token", "mint"], _settings(tmp_path))
    _one_line(r, 3, "no issuer key", "CARELINK_ISSUER_KEYS")
    assert not (tmp_path / "var").exists()


def test_audit_verify_never_makes_a_key_or_a_database(tmp_path):
    (tmp_path / "var").mkdir()
    r = carelink(["audit", "verify", "--keys", str(tmp_path / "keys")], _settings(tmp_path))
    _one_line(r, 3, "no audit checkpoint key")
    assert list((tmp_path / "var").iterdir()) == []
    assert not (tmp_path / "keys").exists()


def test_init_makes_the_folder_keys_and_schema_once(tmp_path):
    env = _settings(tmp_path)
    first = carelink(["init"], env)
    assert first.returncode == 0, first.stderr
    assert "schema version" in first.stdout
    key = (tmp_path / "var" / "issuer" / "private.jwk.json").read_bytes()
    assert carelink(["init"], env).returncode == 0
    assert (tmp_path / "var" / "issuer" / "private.jwk.json").read_bytes() == key
    status = carelink(["db", "status"], env)
    assert status.returncode == 0
    latest = max(number for number, _, _ in MIGRATIONS)
    assert f"schema version {latest} of {latest}" in status.stdout


def test_version():
    r = carelink(["--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"carelink {carelink_version}"


@pytest.mark.parametrize("command", [["serve"], ["index", "build"], ["db", "upgrade"]])
def test_a_missing_data_folder_is_one_line_and_exit_3(tmp_path, command):
    r = carelink(command, _settings(tmp_path), timeout=60)
    _one_line(r, 3, "configuration error", "does not exist")
    assert not (tmp_path / "var").exists()


def _refused_url() -> str:
    return f"postgresql://carelink@127.0.0.1:{free_port()}/carelink"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://user@db.example/carelink", "'mysql' is not supported"),
        ("http://db.example/carelink", "'http' is not supported"),
        ("postgresql://user:secret@127.0.0.1:not-a-port/x", "not a path or a URL"),
        (None, "Connection refused"),
    ],
    ids=["other-database", "wrong-scheme", "malformed", "refused-port"],
)
@pytest.mark.parametrize("command", [["serve", "--workers", "2"], ["db", "upgrade"]])
def test_a_bad_database_url_is_one_line_and_exit_3(tmp_path, command, url, says):
    env = {**_settings(tmp_path), "CARELINK_DATABASE_URL": url or _refused_url()}
    r = carelink(command, env, timeout=60)
    _one_line(r, 3, "configuration error", says)
    assert "secret" not in r.stderr


def test_a_bad_policy_file_stops_serve_before_any_worker_starts(tmp_path):
    env = _settings(tmp_path)
    assert carelink(["init"], env).returncode == 0
    policy = tmp_path / "policy.json"
    policy.write_text("{not json")
    port = str(free_port())
    r = carelink(
        ["serve", "--workers", "2", "--port", port],
        {**env, "CARELINK_CONSENT_POLICY": str(policy)},
        timeout=60,
    )
    _one_line(r, 3, "configuration error", str(policy))


def test_serve_refuses_no_workers():
    _one_line(carelink(["serve", "--workers", "0"]), 2, "--workers")


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An initialised, empty gateway for the extract refusals (made once for the module:
    they only read it)."""
    env = _settings(tmp_path_factory.mktemp("empty-index"))
    assert carelink(["init"], env).returncode == 0
    return env


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--type", "Obsrvation"], 2, "--type Obsrvation: not a FHIR R4 resource type"),
        (["--type", "Account"], 2, "--type Account: not extracted"),
        (["--group", "ward-7"], 2, "--group Group/ward-7 is not known"),
        (["--group", "practice-Z99999"], 2, "registered with practice Z99999"),
        (["--group", "pcn-U00001"], 3, "CARELINK_PCNS"),
    ],
    ids=["misspelt-type", "type-not-extracted", "malformed-group", "unknown-practice", "no-pcns"],
)
def test_extract_refuses_what_does_not_exist_and_writes_nothing(
    tmp_path, empty_index, args, code, says
):
    out = tmp_path / "extract"
    r = carelink(["extract", "--project", "p", "--out", str(out), *args], empty_index)
    _one_line(r, code, says)
    assert not out.exists()


def test_the_demo_checks_its_ports_before_starting_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = carelink(
            ["demo", "--port", str(port), "--database", str(tmp_path / "demo" / "demo.db")],
            timeout=60,
        )
    _one_line(r, 3, f"port {port} (gateway) is already in use")
    assert "starting" not in r.stdout
    assert not (tmp_path / "demo").exists()


def test_token_mint_is_refused_in_production_mode(tmp_path):
    r = carelink(["token", "mint", "--keys", str(tmp_path / "k")], {"CARELINK_MODE": "production"})
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.strip() == (
        "carelink: configuration error: development tokens are refused in production mode"
    )
    assert not (tmp_path / "k").exists()


def test_a_bad_population_size_is_one_line_and_exit_1(tmp_path):
    r = carelink(["population", "generate", "--size", "0", "--out", str(tmp_path)])
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "reserved test range" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_usage_errors_exit_2():
    assert carelink(["simulate", "pharmacy", "--port", "1"]).returncode == 2


def test_serve_refuses_an_unknown_log_level_as_usage_and_a_bad_setting_as_configuration():
    usage = carelink(["serve", "--log-level", "chatty"])
    assert usage.returncode == 2
    assert "--log-level" in usage.stderr
    config = carelink(["serve"], {"CARELINK_LOG_LEVEL": "chatty"})
    assert config.returncode == 3
    assert "CARELINK_LOG_LEVEL" in config.stderr


def test_four_upgrades_at_once_on_a_new_sqlite_database_migrate_it_once(tmp_path):
    (tmp_path / "var").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "carelink", "db", "upgrade"],
            env=env(_settings(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    applied = sorted(int(out.split("(")[1].split()[0]) for _, out, _ in results)
    assert applied == [0, 0, 0, applied[-1]]
    assert applied[-1] > 0
