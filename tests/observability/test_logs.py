"""JSON log lines: one object a line, the request id in it, no exception message."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from carelink.observability import JsonFormatter, bind, log_config, unbind


def _record(message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("carelink.test", logging.WARNING, __file__, 1, message, None, None)
    record.fields = fields
    return record


def test_a_line_is_one_json_object_with_timestamp_level_event_and_fields():
    line = JsonFormatter().format(_record("source failed", source="gp", duration_ms=12.5))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warning"
    assert parsed["logger"] == "carelink.test"
    assert parsed["event"] == "source failed"
    assert parsed["source"] == "gp"
    assert parsed["duration_ms"] == 12.5
    assert parsed["timestamp"].endswith("Z")
    assert "request_id" not in parsed  # outside a request


def test_a_line_written_during_a_request_carries_its_id():
    bound = bind("req-42")
    try:
        parsed = json.loads(JsonFormatter().format(_record("x")))
    finally:
        unbind(bound)
    assert parsed["request_id"] == "req-42"


def test_an_exception_is_logged_as_its_type_and_frames_never_its_message():
    number = "9434765919"
    try:
        raise ValueError(f"NHS number {number} is not valid")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["error"] == "ValueError"
    assert "test_logs.py" in parsed["traceback"]
    assert "9434765919" not in json.dumps(parsed)


def test_the_process_config_sends_every_logger_to_stderr_as_json_at_the_level():
    config = log_config("warning")
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["json"]["()"].endswith("JsonFormatter")
    assert config["loggers"]["uvicorn.access"]["propagate"] is False


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="log level"):
        log_config("verbose")


class _Stream:
    """A stream that remembers each write (one write a flush, when lines are batched)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return [json.loads(x)["event"] for x in "".join(self.writes).splitlines()]


def _logged(handler: logging.Handler, level: int, message: str) -> None:
    handler.handle(logging.LogRecord("carelink.test", level, __file__, 1, message, None, None))


def test_batched_lines_are_written_together_soon_and_a_warning_at_once_in_order():
    from carelink.observability.logs import BufferedLines

    stream = _Stream()
    handler = BufferedLines(stream, interval=0.05)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    for n in range(5):
        _logged(handler, logging.INFO, f"request {n}")
    assert stream.writes == []  # not one write a line
    deadline = time.monotonic() + 5
    while not stream.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(stream.writes) == 1  # all five in one write
    assert stream.lines() == [f"request {n}" for n in range(5)]
    _logged(handler, logging.INFO, "before")
    _logged(handler, logging.WARNING, "source failed")  # written now, after the line before it
    assert stream.lines()[-2:] == ["before", "source failed"]
    _logged(handler, logging.INFO, "last")
    handler.close()  # as logging.shutdown does at exit: nothing waiting is lost
    assert stream.lines()[-1] == "last"


def test_the_process_config_batches_the_lines():
    handler = log_config("info")["handlers"]["stderr"]
    assert handler["()"].endswith("BufferedLines")


def test_a_line_handed_straight_to_the_handler_is_the_line_logging_would_write():
    """``log_fields`` skips the ``LogRecord`` only where the line would reach the
    gateway's one handler anyway; the line is the same, and a capture (another handler,
    as pytest's ``caplog``) still gets its record."""
    from carelink.observability.logs import BufferedLines, log_fields

    stream = _Stream()
    handler = BufferedLines(stream, interval=60)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("carelink.test.direct")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    fields = {"method": "GET", "route": "/fhir/Patient", "status": 200, "sources": []}
    started = datetime.now(UTC)
    bound = bind("request-1")
    try:
        log_fields(logger, logging.INFO, "request", fields)  # straight to the handler
        record = logger.makeRecord(logger.name, logging.INFO, "", 0, "request", (), None)
        record.fields = fields
        handler.handle(record)  # the ordinary way
        log_fields(logger, logging.DEBUG, "request", fields)  # below the level: nothing
        seen: list[logging.LogRecord] = []
        capture = logging.Handler()
        capture.emit = seen.append  # type: ignore[method-assign]
        logger.addHandler(capture)
        log_fields(logger, logging.INFO, "request", fields)
    finally:
        unbind(bound)
        logger.handlers.clear()
    handler.flush()
    direct, ordinary, captured = (json.loads(x) for x in "".join(stream.writes).splitlines())
    # each line the time it was written, in turn within this test (not compared to the
    # second, which the lines may cross)
    written = [
        datetime.fromisoformat(str(line.pop("timestamp")).replace("Z", "+00:00"))
        for line in (direct, ordinary, captured)
    ]
    assert started - timedelta(milliseconds=1) <= written[0] <= written[1] <= written[2]
    assert written[2] <= datetime.now(UTC) + timedelta(milliseconds=1)
    for line in (direct, captured):
        assert line == ordinary
    assert [r.fields for r in seen] == [fields]  # type: ignore[attr-defined]
    assert ordinary["request_id"] == "request-1"
    assert ordinary["route"] == "/fhir/Patient"


@settings(max_examples=200, deadline=None)
@given(
    created=st.floats(min_value=0, max_value=4e9),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING]),
    logger=st.sampled_from(["carelink.access", "carelink.x", 'odd "name"\n']),
    event=st.text(max_size=20),
    request_id=st.one_of(st.none(), st.text(max_size=20)),
    fields=st.dictionaries(
        st.sampled_from(["method", "route", "status", "duration_ms", "sources", "é"]),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=10)
        ),
        min_size=1,
    ),
)
def test_a_line_written_from_bytes_is_the_formatters_line(
    created, level, logger, event, request_id, fields
):
    """``write_line`` (the access line's way) hands the handler what ``JsonFormatter``
    writes for the same record, byte for byte."""
    from carelink.observability.logs import BufferedLines, write_line

    handler = BufferedLines(_Stream(), interval=60)  # type: ignore[arg-type]
    added: list[tuple[str, int]] = []
    handler.add = lambda line, lvl: added.append((line, lvl))  # type: ignore[method-assign]
    record = logging.LogRecord(logger, level, "", 0, event, None, None)
    record.created = created
    record.fields = fields
    bound = bind(request_id) if request_id is not None else None
    try:
        expected = JsonFormatter().format(record)
        write_line(handler, created, level, logger, event, orjson.dumps(fields)[1:-1])
    finally:
        if bound is not None:
            unbind(bound)
    assert added == [(expected, level)]


@pytest.mark.parametrize("sources", [[], [("gp", "ok", 12.5), ("acute", "timeout", 500.0)]])
@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_the_access_line_is_the_same_by_the_gateways_handler_and_by_a_capture(sources, level):
    """``Telemetry.request`` writes its line from bytes when it goes to the gateway's own
    handler alone, else logs a record: the same line both ways, and the same metrics."""
    from carelink.observability import Metrics, Telemetry
    from carelink.observability.context import note_source
    from carelink.observability.logs import BufferedLines

    logger = logging.getLogger("carelink.access")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    stream = _Stream()
    own = BufferedLines(stream, interval=60)  # type: ignore[arg-type]
    own.setFormatter(JsonFormatter())
    lines: list[dict[str, object]] = []
    telemetry = Telemetry(Metrics())
    started = datetime.now(UTC)
    try:
        logger.handlers[:] = [own]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        for capture in (False, True):
            if capture:  # a second handler: the ordinary way, formatted by the same class
                seen: list[logging.LogRecord] = []
                other = logging.Handler()
                other.emit = seen.append  # type: ignore[method-assign]
                logger.addHandler(other)
            bound = bind("rid-1")
            try:
                for source in sources:
                    note_source(*source)
                telemetry.request("GET", "/fhir/Patient/{pid}/$everything", 200, 0.01234, level)
            finally:
                unbind(bound)
        own.flush()
        lines = [json.loads(x) for x in "".join(stream.writes).splitlines()]
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    direct, ordinary = lines
    # each line the time it was written (the two passes in turn, within this test): not
    # compared to the second, which a pass may cross
    first, second = (
        datetime.fromisoformat(str(line.pop("timestamp")).replace("Z", "+00:00"))
        for line in (direct, ordinary)
    )
    assert started - timedelta(milliseconds=1) <= first <= second
    assert second <= datetime.now(UTC) + timedelta(milliseconds=1)
    assert direct == ordinary
    assert direct["level"] == logging.getLevelName(level).lower()
    assert direct["sources"] == [{"source": s, "outcome": o, "ms": ms} for s, o, ms in sources]
    assert direct["duration_ms"] == 12.3
    text = generate_latest(telemetry.metrics.registry).decode()
    assert (
        'carelink_http_requests_total{method="GET",route="/fhir/Patient/{pid}/$everything",'
        'status="200"} 2.0'
    ) in text


def test_a_forked_process_writes_its_batched_lines_with_a_flusher_of_its_own():
    """The flusher is a thread, which a forked worker does not inherit: its first line
    starts one there, so its lines are written without a warning to push them out."""
    import os

    from carelink.observability.logs import BufferedLines

    stream = _Stream()
    handler = BufferedLines(stream, interval=0.01)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    _logged(handler, logging.INFO, "in the parent")  # the parent's flusher starts
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result is its exit status
        _logged(handler, logging.INFO, "in the child")
        deadline = time.monotonic() + 5
        while "in the child" not in "".join(stream.writes) and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0 if "in the child" in "".join(stream.writes) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
