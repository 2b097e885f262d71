"""Telemetry: what happened, told once and turned into metrics, log lines and the
current request's record of the sources it asked.

The domain hears nothing of Prometheus or logging: the fan-out reports each
source's answer and each circuit change to whoever it was given (a ``Telemetry``
in the gateway), and the HTTP edge reports each finished request here.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from carelink.observability.context import current_request_id, note_source, sources_asked
from carelink.observability.logs import (
    ACCESS,
    CIRCUIT,
    SOURCES,
    log_fields,
    own_handler,
    write_line,
)
from carelink.observability.metrics import (
    CIRCUIT_STATES,
    Metrics,
    Observer,
    Series,
    observe,
    observer_of,
    series_of,
)
from carelink.observability.tracing import SourceSpans

#: the fan-out's outcomes that mean a source was asked and did not answer
FAILED = frozenset({"timeout", "error"})
#: the fan-out's outcome for a source not asked because its circuit is open
NOT_ASKED = "circuit-open"

_access = logging.getLogger(ACCESS)
_sources = logging.getLogger(SOURCES)
_circuit = logging.getLogger(CIRCUIT)


class Telemetry:
    """Metrics and logs for one gateway process."""

    def __init__(
        self, metrics: Metrics, sources: Iterable[str] = (), spans: SourceSpans | None = None
    ) -> None:
        self.metrics = metrics
        self.spans = spans  # None unless an OpenTelemetry tracer provider is configured
        #: each (method, route, status)'s counter and histogram series, looked up once:
        #: ``labels()`` takes a lock and builds a key on every call. Bounded: methods and
        #: routes are fixed sets (``api.observe``), statuses a few dozen.
        self._series: dict[tuple[str, str, int], tuple[Series, bytes]] = {}
        #: each (source, outcome)'s counter and histogram series (none for an outcome
        #: with no latency), looked up once: sources are configured, outcomes a fixed set
        self._answers: dict[tuple[str, str], tuple[Callable[[float], None], Observer | None]] = {}
        #: the audit commits' two histograms, ready to observe (``observer_of``)
        self._commits = (observer_of(metrics.audit_seconds), observer_of(metrics.audit_batch))
        for name in sources:  # every configured source has a circuit series from the start
            metrics.circuit_state.labels(name).set(CIRCUIT_STATES["closed"])

    def answered(self, source: str, outcome: str, latency_ms: float, reason: str | None) -> None:
        """A source answered, failed or was skipped (circuit open) for the current request."""
        series = self._answers.get((source, outcome))
        if series is None:
            series = self._answer_series(source, outcome)
        count, timed = series  # ``inc`` and ``observe``, unchecked (``series_of``)
        count(1)
        if timed is not None:  # none when not asked: no latency
            observe(timed, latency_ms / 1000)
        note_source(source, outcome, round(latency_ms, 1))
        if self.spans is not None:
            failed = outcome in FAILED
            self.spans.record(source, outcome, latency_ms, reason, current_request_id(), failed)
        if outcome in FAILED:
            _sources.warning(
                "source failed",
                extra={
                    "fields": {
                        "source": source,
                        "outcome": outcome,
                        "reason": reason,
                        "duration_ms": round(latency_ms, 1),
                    }
                },
            )

    def _answer_series(
        self, source: str, outcome: str
    ) -> tuple[Callable[[float], None], Observer | None]:
        calls = self.metrics.source_calls.labels(source, outcome)
        series = (
            calls._value.inc,  # what ``calls.inc()`` does, without its checks (``series_of``)
            None
            if outcome == NOT_ASKED
            else observer_of(self.metrics.source_seconds.labels(source, outcome)),
        )
        self._answers[(source, outcome)] = series
        return series

    def circuit(self, source: str, state: str) -> None:
        """A source's circuit breaker entered ``state`` (closed | half-open | open)."""
        self.metrics.circuit_state.labels(source).set(CIRCUIT_STATES.get(state, 2.0))
        self.metrics.circuit_changes.labels(source, state).inc()
        level = logging.WARNING if state == "open" else logging.INFO
        _circuit.log(
            level, f"circuit {state}", extra={"fields": {"source": source, "state": state}}
        )

    def request(
        self, method: str, route: str, status: int, seconds: float, level: int = logging.INFO
    ) -> None:
        """A request was answered: its access line (at ``level``) and its metrics."""
        series = self._series.get((method, route, status))
        if series is None:
            series = self._request_series(method, route, status)
        count, (add, buckets, bounds) = series[0]  # ``inc`` and ``observe``, unchecked
        count(1)
        add(seconds)  # ``observe``, written out: once a request
        buckets[bisect_left(bounds, seconds)](1)
        if not _access.isEnabledFor(level):
            return
        asked = sources_asked()
        duration = round(seconds * 1000, 1)
        handler = own_handler(_access, level)
        if handler is None:  # another configuration (a test's capture): the ordinary way
            fields: dict[str, Any] = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration,
                "sources": [{"source": c[0], "outcome": c[1], "ms": c[2]} for c in asked],
            }
            log_fields(_access, level, "request", fields)
            return
        # the same line from bytes: the method, route and status's part made once
        called = (
            orjson.dumps([{"source": c[0], "outcome": c[1], "ms": c[2]} for c in asked])
            if asked
            else b"[]"  # none, on the lookup
        )
        tail = b"".join((series[1], orjson.dumps(duration), b',"sources":', called))
        write_line(handler, time.time(), level, ACCESS, "request", tail)

    def _request_series(self, method: str, route: str, status: int) -> tuple[Series, bytes]:
        """The counter and histogram series of (``method``, ``route``, ``status``), and the
        access line's fields for them up to the duration's value, as JSON."""
        code = str(status)
        said = orjson.dumps({"method": method, "route": route, "status": status})
        series = (
            series_of(
                self.metrics.requests.labels(method, route, code),
                self.metrics.request_seconds.labels(method, route, code),
            ),
            said[1:-1] + b',"duration_ms":',
        )
        self._series[(method, route, status)] = series
        return series

    def audit_committed(self, seconds: float, events: int) -> None:
        """One group commit of ``events`` audit events took ``seconds``."""
        observe(self._commits[0], seconds)
        observe(self._commits[1], events)
