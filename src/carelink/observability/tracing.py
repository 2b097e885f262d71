"""OpenTelemetry spans for the sources a request asked, when the process has a tracer
provider; nothing at all when it has none.

FastAPI opens a server span for each request, continuing the caller's
``traceparent``, as soon as a tracer provider is configured (the OpenTelemetry SDK,
set up by ``opentelemetry-instrument carelink serve`` or by whatever hosts the app;
``pip install carelink[otel]`` brings the SDK and the OTLP exporter). ``SourceSpans``
adds beneath it one client span per source the fan-out asked, named
``source <name>``, with the source, its outcome, the gateway's request id and, for a
failure, the reason. Its start and end are the fan-out's own measurement, so tracing
adds no timing of its own to the call.

Without a configured provider ``source_spans()`` is None, and ``Telemetry`` skips
tracing with one test per source answer (the lookup path asks no source and runs no
tracing code at all). The gateway imports ``opentelemetry-api`` only.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER = "carelink"


class SourceSpans:
    """Turns each source answer into a finished client span under the current span."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def record(
        self,
        source: str,
        outcome: str,
        latency_ms: float,
        reason: str | None,
        request_id: str | None,
        failed: bool,
    ) -> None:
        """One span that ended now and began ``latency_ms`` ago."""
        end = time.time_ns()
        attributes = {"carelink.source": source, "carelink.source.outcome": outcome}
        if request_id is not None:
            attributes["carelink.request_id"] = request_id
        span = self.tracer.start_span(
            f"source {source}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end - int(latency_ms * 1_000_000),
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, reason or outcome))
        span.end(end_time=end)


def source_spans(provider: trace.TracerProvider | None = None) -> SourceSpans | None:
    """Spans for source calls from ``provider`` (default: the global one), or None when
    no real provider is configured (the API's proxy or no-op one)."""
    provider = provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return SourceSpans(provider.get_tracer(TRACER))
