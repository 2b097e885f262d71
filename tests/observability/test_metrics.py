"""Prometheus metrics: what a scrape reads, in one process and across workers."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from carelink.observability import LiveCounts, Metrics, Telemetry, bind, exposition, unbind
from tests.support.procs import env


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_requests_sources_circuits_and_audit_commits_are_counted():
    telemetry = Telemetry(Metrics(), ["gp", "acute"])
    bound = bind("r1")
    telemetry.answered("gp", "ok", 12.0, None)
    telemetry.answered("acute", "timeout", 500.0, "no answer within 500 ms")
    telemetry.request("GET", "/fhir/Patient/{pid}/$everything", 200, 0.52)
    unbind(bound)
    telemetry.circuit("acute", "open")
    telemetry.audit_committed(0.003, 4)
    got = _samples(exposition(telemetry.metrics))
    route = (("method", "GET"), ("route", "/fhir/Patient/{pid}/$everything"), ("status", "200"))
    assert got[("carelink_http_requests_total", route)] == 1
    assert got[("carelink_http_request_duration_seconds_count", route)] == 1
    bucket = tuple(sorted((*route, ("le", "1.0"))))
    assert got[("carelink_http_request_duration_seconds_bucket", bucket)] == 1
    assert (
        got[("carelink_source_requests_total", (("outcome", "timeout"), ("source", "acute")))] == 1
    )
    assert got[("carelink_source_circuit_state", (("source", "acute"),))] == 2
    assert got[("carelink_source_circuit_state", (("source", "gp"),))] == 0
    assert got[("carelink_audit_commit_events_sum", ())] == 4
    assert got[("carelink_audit_commit_duration_seconds_count", ())] == 1


def test_each_source_and_outcome_is_counted_in_its_own_series_however_often():
    """Answers of several sources and outcomes, repeated and interleaved, each counted
    (and timed, but for a source skipped with its circuit open) in its own series. Fails
    when a series looked up once is another's."""
    telemetry = Telemetry(Metrics(), ["gp", "acute"])
    answers = [
        ("gp", "ok", 10.0),
        ("acute", "ok", 20.0),
        ("gp", "timeout", 500.0),
        ("gp", "ok", 30.0),
        ("acute", "circuit-open", 0.0),
        ("acute", "ok", 40.0),
        ("gp", "ok", 50.0),
    ]
    for source, outcome, ms in answers:
        telemetry.answered(source, outcome, ms, None)
    got = _samples(exposition(telemetry.metrics))
    for source, outcome in {(s, o) for s, o, _ in answers}:
        key = (("outcome", outcome), ("source", source))
        mine = [ms for s, o, ms in answers if (s, o) == (source, outcome)]
        assert got[("carelink_source_requests_total", key)] == len(mine)
        if outcome == "circuit-open":
            assert ("carelink_source_request_duration_seconds_count", key) not in got
        else:
            assert got[("carelink_source_request_duration_seconds_count", key)] == len(mine)
            total = got[("carelink_source_request_duration_seconds_sum", key)]
            assert abs(total - sum(mine) / 1000) < 1e-9


def test_two_apps_in_one_process_keep_their_own_metrics():
    a, b = Metrics(), Metrics()
    a.requests.labels("GET", "/livez", "200").inc()
    assert b"/livez" not in exposition(b)


def test_live_counts_report_every_known_state_and_skip_a_failed_read():
    jobs = LiveCounts("carelink_export_jobs", "jobs", "state", lambda: {"running": 2}, ["accepted"])
    got = _samples(exposition(Metrics(), [jobs]))
    assert got[("carelink_export_jobs", (("state", "running"),))] == 2
    assert got[("carelink_export_jobs", (("state", "accepted"),))] == 0

    def down() -> dict[str, int]:
        raise OSError("database gone")

    broken = LiveCounts("carelink_export_jobs", "jobs", "state", down, ["accepted"])
    assert b"carelink_export_jobs" not in exposition(Metrics(), [broken])


def test_in_multiprocess_mode_a_scrape_sums_every_worker(tmp_path):
    """Two 'workers' (processes) count requests; a third process's scrape sees both."""
    worker = textwrap.dedent(
        """
        from carelink.observability import Metrics, Telemetry
        metrics = Metrics()
        metrics.requests.labels("GET", "/fhir/Patient", "200").inc(2)
        # and once as the gateway counts (on the series' values: ``series_of``)
        Telemetry(metrics).request("GET", "/fhir/Patient", 200, 0.01, 10)
        """
    )
    scrape = textwrap.dedent(
        """
        import sys
        from carelink.observability import Metrics, exposition
        sys.stdout.write(exposition(Metrics()).decode())
        """
    )
    multi = env({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=multi, check=True)
    out = subprocess.run(
        [sys.executable, "-c", scrape], env=multi, check=True, capture_output=True
    ).stdout
    route = (("method", "GET"), ("route", "/fhir/Patient"), ("status", "200"))
    assert _samples(out)[("carelink_http_requests_total", route)] == 6
    assert _samples(out)[("carelink_http_request_duration_seconds_count", route)] == 2


def test_several_workers_get_a_metrics_directory_and_a_reused_one_is_cleared(tmp_path, monkeypatch):
    from carelink.observability.metrics import MULTIPROC_DIR, prepare_multiprocess

    # set, then removed, through monkeypatch: the directory ``prepare_multiprocess`` puts
    # in the environment is taken out again after the test (left there, it sent the
    # metrics of every gateway the later tests start to a folder no scrape read)
    monkeypatch.setenv(MULTIPROC_DIR, "")
    monkeypatch.delenv(MULTIPROC_DIR)
    assert prepare_multiprocess(1) is None
    made = prepare_multiprocess(2)
    assert made is not None
    assert env()[MULTIPROC_DIR] == made  # the workers inherit it
    operators = tmp_path / "metrics"
    operators.mkdir()
    (operators / "counter_123.db").write_bytes(b"old")
    (operators / "README").write_text("kept")
    monkeypatch.setenv(MULTIPROC_DIR, str(operators))
    assert prepare_multiprocess(4) == str(operators)
    assert [p.name for p in operators.iterdir()] == ["README"]


def test_the_access_line_names_each_source_asked_and_none_when_none_was(caplog):
    """Each request's access line lists the sources it asked, in the order they answered,
    with outcome and time, and an empty list for a request that asked none (the lookup)."""
    telemetry = Telemetry(Metrics(), ["gp", "acute"])
    caplog.set_level("INFO", logger="carelink.access")
    bound = bind("r1")
    telemetry.answered("gp", "ok", 12.04, None)
    telemetry.answered("acute", "timeout", 500.0, "no answer within 500 ms")
    telemetry.request("GET", "/fhir/Patient/{pid}/$everything", 200, 0.52)
    unbind(bound)
    bound = bind("r2")
    telemetry.request("GET", "/fhir/Patient", 200, 0.01)
    unbind(bound)
    lines = [r.fields for r in caplog.records if r.name == "carelink.access"]  # type: ignore[attr-defined]
    assert [line["sources"] for line in lines] == [
        [
            {"source": "gp", "outcome": "ok", "ms": 12.0},
            {"source": "acute", "outcome": "timeout", "ms": 500.0},
        ],
        [],
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST"]),
            st.sampled_from(["/fhir/Patient", "unmatched"]),
            st.sampled_from([200, 404, 503]),
            st.floats(min_value=0, max_value=20),
        ),
        max_size=30,
    ),
    st.lists(
        st.tuples(
            st.sampled_from(["gp", "acute"]),
            st.sampled_from(["ok", "timeout", "circuit-open"]),
            st.floats(min_value=0, max_value=20_000),
        ),
        max_size=30,
    ),
)
def test_series_counted_straight_on_their_values_are_what_the_public_calls_count(requests, answers):
    """``Telemetry`` counts and observes on the series' values (``series_of``,
    ``observer_of``; requests, sources, audit commits): the
    exposition is what ``inc()`` and ``observe()`` give for the same events, bucket by
    bucket (an amount on a bucket's bound included)."""
    ours = Telemetry(Metrics())
    theirs = Metrics()
    for method, route, status, seconds in [*requests, ("GET", "/fhir/Patient", 200, 0.005)]:
        ours.request(method, route, status, seconds, logging.DEBUG)  # no line: not enabled
        theirs.requests.labels(method, route, str(status)).inc()
        theirs.request_seconds.labels(method, route, str(status)).observe(seconds)
    for source, outcome, ms in answers:
        ours.answered(source, outcome, ms, None)
        theirs.source_calls.labels(source, outcome).inc()
        if outcome != "circuit-open":
            theirs.source_seconds.labels(source, outcome).observe(ms / 1000)
        ours.audit_committed(ms / 1000, len(source) * 16)  # a commit a source: any amounts
        theirs.audit_seconds.observe(ms / 1000)
        theirs.audit_batch.observe(len(source) * 16)

    def shown(metrics: Metrics) -> list[str]:
        text = generate_latest(metrics.registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert shown(ours.metrics) == shown(theirs)
