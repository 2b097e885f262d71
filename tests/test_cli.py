"""The ``carelink`` command: one-line errors and documented exit codes."""

from __future__ import annotations

from carelink.auth.tokens import TokenPolicy, load_keys, validate
from tests.support.procs import carelink


def test_token_mint_prints_a_token_the_gateway_would_accept(tmp_path):
    keys = tmp_path / "issuer"
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
