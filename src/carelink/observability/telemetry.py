"""Telemetry: what happened, told once and turned into metrics, log lines and the
current request's record of the sources it asked.

The domain hears nothing of Prometheus or logging: the fan-out reports each
source's answer and each circuit change to whoever it was given (a ``Telemetry``
in the gateway), and the HTTP edge reports each finished request here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from carelink.observability.context import current_request_id, note_source, sources_asked
from carelink.observability.logs import ACCESS, CIRCUIT, SOURCES, log_fields
from carelink.observability.metrics import CIRCUIT_STATES, Metrics
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
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        #: each (source, outcome)'s counter and histogram series (none for an outcome
        #: with no latency), looked up once: sources are configured, outcomes a fixed set
        self._answers: dict[tuple[str, str], tuple[Any, Any]] = {}
        for name in sources:  # every configured source has a circuit series from the start
            metrics.circuit_state.labels(name).set(CIRCUIT_STATES["closed"])

    def answered(self, source: str, outcome: str, latency_ms: float, reason: str | None) -> None:
        """A source answered, failed or was skipped (circuit open) for the current request."""
        series = self._answers.get((source, outcome))
        if series is None:
            series = (
                self.metrics.source_calls.labels(source, outcome),
                None
                if outcome == NOT_ASKED
                else self.metrics.source_seconds.labels(source, outcome),
            )
            self._answers[(source, outcome)] = series
        series[0].inc()
        if series[1] is not None:
            series[1].observe(latency_ms / 1000)
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
            code = str(status)
            series = (
                self.metrics.requests.labels(method, route, code),
                self.metrics.request_seconds.labels(method, route, code),
            )
            self._series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if not _access.isEnabledFor(level):
            return
        asked = sources_asked()
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            # none, on the lookup: no comprehension made to walk nothing
            "sources": [{"source": c.source, "outcome": c.outcome, "ms": c.ms} for c in asked]
            if asked
            else [],
        }
        log_fields(_access, level, "request", fields)

    def audit_committed(self, seconds: float, events: int) -> None:
        """One group commit of ``events`` audit events took ``seconds``."""
        self.metrics.audit_seconds.observe(seconds)
        self.metrics.audit_batch.observe(events)
