"""Settings: read once, validated, and production refuses development shortcuts."""

from __future__ import annotations

import pytest

from carelink.errors import ConfigError
from carelink.settings import DEFAULT_SOURCE_ODS, DEFAULT_SOURCES, Settings
from tests.support.procs import carelink


def test_tokens_are_required_by_default():
    s = Settings.from_env({})
    assert s.auth == "jwt"
    assert s.database_url == "var/carelink.db"
    assert dict(s.sources) == DEFAULT_SOURCES


def test_sources_and_budget_from_the_environment():
    s = Settings.from_env(
        {
            "CARELINK_SOURCES": "gp=http://a:1, acute=http://b:2",
            "CARELINK_BUDGET": "0.25",
            "CARELINK_AUTH": "development",
        }
    )
    assert dict(s.sources) == {"gp": "http://a:1", "acute": "http://b:2"}
    assert s.budget == 0.25


def test_stored_search_results_live_ten_minutes_unless_configured():
    assert Settings.from_env({}).result_ttl == 600.0
    assert Settings.from_env({"CARELINK_RESULT_TTL": "30"}).result_ttl == 30.0


def test_audit_commits_go_at_once_unless_a_gathering_window_is_configured():
    assert Settings.from_env({}).audit_gather_ms == 0.0
    assert Settings.from_env({"CARELINK_AUDIT_GATHER_MS": "2"}).audit_gather_ms == 2.0
    assert Settings.from_env({"CARELINK_AUDIT_GATHER_MS": "0"}).audit_gather_ms == 0.0
    assert Settings.from_env({"CARELINK_AUDIT_GATHER_MS": "0.5"}).audit_gather_ms == 0.5


def test_each_source_is_named_by_an_ods_code_the_environment_can_change():
    assert dict(Settings.from_env({}).source_ods) == DEFAULT_SOURCE_ODS
    s = Settings.from_env({"CARELINK_SOURCE_ODS": "acute=RXX01, hospice=Y12345"})
    assert s.source_ods["acute"] == "RXX01"
    assert s.source_ods["hospice"] == "Y12345"
    assert s.source_ods["gp"] == "registered-practice"  # the defaults stay for the rest


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CARELINK_MODE": "production", "CARELINK_AUTH": "development"},
            "production mode refuses development authentication",
        ),
        ({"CARELINK_MODE": "staging"}, "development or production"),
        ({"CARELINK_BUDGET": "soon"}, "number of seconds"),
        ({"CARELINK_BUDGET": "0"}, "between 0 and 30"),
        ({"CARELINK_SOURCES": "gp"}, "name=url"),
        ({"CARELINK_SOURCES": "gp=ftp://x"}, "http://, https:// or mllp://"),
        ({"CARELINK_SOURCES": "gp=mllp://127.0.0.1:2575"}, "only community sources take a feed"),
        ({"CARELINK_SOURCES": "community=mllp://127.0.0.1"}, "mllp://host:port"),
        ({"CARELINK_RESULT_TTL": "0"}, "CARELINK_RESULT_TTL must be more than 0"),
        ({"CARELINK_RESULT_TTL": "a while"}, "number of seconds"),
        ({"CARELINK_SOURCE_ODS": "acute"}, "name=ODS code"),
        ({"CARELINK_SOURCE_ODS": "acute=rac 00"}, "'acute': 'rac 00' is not an ODS code"),
        ({"CARELINK_PUBLIC_BASE_URL": "carelink.example/fhir"}, "CARELINK_PUBLIC_BASE_URL"),
        ({"CARELINK_PUBLIC_BASE_URL": "https://x.example/fhir?a=b"}, "without query"),
        ({"CARELINK_LOG_LEVEL": "chatty"}, "CARELINK_LOG_LEVEL must be one of"),
        ({"CARELINK_HEADER_TIMEOUT": "0"}, "CARELINK_HEADER_TIMEOUT"),
        ({"CARELINK_KEEPALIVE_TIMEOUT": "0.5"}, "CARELINK_KEEPALIVE_TIMEOUT"),
        ({"CARELINK_AUDIT_GATHER_MS": "-1"}, "CARELINK_AUDIT_GATHER_MS must be from 0 to 50"),
        ({"CARELINK_AUDIT_GATHER_MS": "51"}, "CARELINK_AUDIT_GATHER_MS must be from 0 to 50"),
        ({"CARELINK_AUDIT_GATHER_MS": "nan"}, "CARELINK_AUDIT_GATHER_MS must be from 0 to 50"),
        ({"CARELINK_AUDIT_GATHER_MS": "soon"}, "number of ms"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_gateway_refuses_to_start_in_production_mode_without_a_token_issuer():
    result = carelink(
        ["serve", "--port", "1"], {"CARELINK_MODE": "production", "CARELINK_AUTH": "development"}
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "carelink: configuration error: production mode refuses development authentication: "
        "configure a token issuer (CARELINK_AUTH) before starting in production"
    ]


def test_token_mode_without_an_audience_does_not_start():
    from carelink.app import create_app

    with pytest.raises(ConfigError, match="CARELINK_AUDIENCE"):
        create_app(Settings.from_env({}))


def test_the_gateway_does_not_start_with_a_profile_file_it_cannot_use(tmp_path):
    (tmp_path / "UKCore-Patient.json").write_text('{"resourceType": "StructureDefinition"')
    result = carelink(
        ["serve", "--port", "1"],
        {
            "CARELINK_AUTH": "development",
            "CARELINK_PROFILES": str(tmp_path),
            # a database that is there: the start-up checks look at it first
            "CARELINK_DATABASE_URL": str(tmp_path / "carelink.db"),
        },
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"carelink: configuration error: {tmp_path / 'UKCore-Patient.json'}:1: a profile is "
        "not JSON (unexpected end of data)"
    ]


def test_input_limits_have_sane_defaults_and_come_from_the_environment():
    s = Settings.from_env({})
    assert (s.max_body_bytes, s.max_header_bytes) == (1024 * 1024, 32 * 1024)
    assert (s.max_json_depth, s.max_consent_provisions) == (32, 100)
    changed = Settings.from_env({"CARELINK_MAX_CONSENT_PROVISIONS": "20"})
    assert changed.max_consent_provisions == 20


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
def test_an_input_limit_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ConfigError, match="CARELINK_MAX_BODY_BYTES"):
        Settings.from_env({"CARELINK_MAX_BODY_BYTES": value})


def test_links_are_built_from_the_public_base_url_else_the_audience_else_the_demos():
    assert Settings.from_env({}).public_base() == "http://127.0.0.1:8080/fhir"
    aud = Settings.from_env({"CARELINK_AUDIENCE": "http://10.0.0.5:9000/fhir"})
    assert aud.public_base() == "http://10.0.0.5:9000/fhir"
    public = Settings.from_env(
        {
            "CARELINK_AUDIENCE": "http://10.0.0.5:9000/fhir",
            "CARELINK_PUBLIC_BASE_URL": "https://carelink.example.nhs.uk/ics/fhir/",
        }
    )
    assert public.public_base() == "https://carelink.example.nhs.uk/ics/fhir"


def test_operability_settings_have_defaults_and_come_from_the_environment():
    s = Settings.from_env({})
    assert (s.log_level, s.keepalive_timeout, s.header_timeout, s.metrics_token) == (
        "info",
        5,
        10.0,
        None,
    )
    s = Settings.from_env(
        {
            "CARELINK_LOG_LEVEL": "WARNING",
            "CARELINK_KEEPALIVE_TIMEOUT": "30",
            "CARELINK_HEADER_TIMEOUT": "2.5",
            "CARELINK_METRICS_TOKEN": "t",
        }
    )
    assert (s.log_level, s.keepalive_timeout, s.header_timeout, s.metrics_token) == (
        "warning",
        30,
        2.5,
        "t",
    )


def test_a_community_source_at_an_mllp_address_is_a_feed():
    s = Settings.from_env({"CARELINK_SOURCES": "community=mllp://127.0.0.1:2575,gp=http://x"})
    assert s.feeds() == {"community": ("127.0.0.1", 2575)}


def test_the_gp_connect_consumer_identity_and_source_tls_come_from_settings():
    from carelink.assembly import consumer_of

    s = Settings.from_env(
        {
            "CARELINK_GPCONNECT_ASID": "200000000999",
            "CARELINK_GPCONNECT_PROVIDER_ASID": "918999100001",
            "CARELINK_SOURCE_TLS": "gp=/k/cert.pem;/k/key.pem;/k/ca.pem,acute=;;/k/ca2.pem",
        }
    )
    consumer = consumer_of(s)
    assert (consumer.asid, consumer.provider_asid) == ("200000000999", "918999100001")
    assert consumer.endpoint == consumer_of(Settings()).endpoint  # unset: the demo's
    assert (s.source_tls["gp"].cert, s.source_tls["gp"].ca) == ("/k/cert.pem", "/k/ca.pem")
    assert s.source_tls["acute"].cert is None
    assert s.source_tls["acute"].ca == "/k/ca2.pem"


def test_a_build_uses_a_writer_a_core_up_to_two_unless_told():
    """Each writer holds ~150 MB at the full test range: two stayed under the build's
    1 GB, four did not (1,225 MB), so the default stops at two; more on request."""
    from carelink.federation.build import writer_processes

    assert Settings.from_env({}).index_writers == 0  # as the machine allows
    assert [writer_processes(c) for c in (None, 1, 2, 4, 64)] == [1, 1, 2, 2, 2]
    assert writer_processes(8, most=4) == 4
    assert Settings.from_env({"CARELINK_INDEX_WRITERS": "4"}).index_writers == 4


@pytest.mark.parametrize("value", ["two", "2.5", "-1", "17"])
def test_a_writer_count_that_is_not_one_is_refused_in_one_line(value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"CARELINK_INDEX_WRITERS": value})
    assert str(raised.value).startswith("CARELINK_INDEX_WRITERS must be a whole number")
    assert "\n" not in str(raised.value)
