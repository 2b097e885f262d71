"""OpenTelemetry spans for source calls: one finished client span per source answer,
under the request's span, when a tracer provider is configured; none otherwise.

The provider here is the test's own recorder written against the OpenTelemetry API
(the SDK is the operator's, not a test dependency); ``Telemetry`` is the real one.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from carelink.observability import Metrics, Telemetry, bind, source_spans, unbind


class Span(NonRecordingSpan):
    """A span that remembers what it was told."""

    def __init__(self, name: str, parent: SpanContext, **fields: Any) -> None:
        super().__init__(SpanContext(parent.trace_id, 0xB0B, False, TraceFlags(1)))
        self.name, self.parent, self.fields = name, parent, fields
        self.status: trace.Status | None = None
        self.end_time: int | None = None

    def set_status(self, status: Any, description: str | None = None) -> None:
        self.status = status

    def end(self, end_time: int | None = None) -> None:
        self.end_time = end_time


class Recorder(trace.Tracer):
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def start_span(self, name: str, context: Any = None, **fields: Any) -> Span:  # type: ignore[override]
        parent = trace.get_current_span(context).get_span_context()
        span = Span(name, parent, **fields)
        self.spans.append(span)
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # not used by carelink


class Provider(trace.TracerProvider):
    def __init__(self) -> None:
        self.tracer = Recorder()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Recorder:
        return self.tracer


REQUEST_SPAN = SpanContext(0xABC, 0xDEF, True, TraceFlags(1))


def _answered(telemetry: Telemetry, *answers: tuple[str, str, float, str | None]) -> None:
    """Report source answers as the fan-out does, inside a request (id and server span)."""
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(REQUEST_SPAN)))
    bound = bind("req-42")
    try:
        for source, outcome, latency, reason in answers:
            telemetry.answered(source, outcome, latency, reason)
    finally:
        unbind(bound)
        otel_context.detach(token)


def test_without_a_configured_provider_nothing_is_traced():
    assert source_spans() is None  # the API's own proxy provider: no SDK configured
    assert source_spans(trace.NoOpTracerProvider()) is None


def test_each_source_answer_is_a_client_span_under_the_request_with_its_id_and_timing():
    provider = Provider()
    spans = source_spans(provider)
    assert spans is not None
    telemetry = Telemetry(Metrics(), ["acute", "gp"], spans=spans)
    _answered(telemetry, ("acute", "ok", 12.5, None), ("gp", "timeout", 800.0, "no answer"))
    acute, gp = provider.tracer.spans
    assert [acute.name, gp.name] == ["source acute", "source gp"]
    assert acute.parent.span_id == REQUEST_SPAN.span_id
    assert acute.fields["kind"] is SpanKind.CLIENT
    assert acute.fields["attributes"] == {
        "carelink.source": "acute",
        "carelink.source.outcome": "ok",
        "carelink.request_id": "req-42",
    }
    assert acute.end_time is not None
    assert acute.end_time - acute.fields["start_time"] == 12_500_000
    assert acute.status is None
    assert gp.status is not None
    assert gp.status.status_code is StatusCode.ERROR
    assert gp.status.description == "no answer"
