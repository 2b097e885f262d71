"""Structured logs: one JSON object a line on stderr.

Built on the standard library's ``logging`` rather than structlog: carelink and
the libraries under it (uvicorn, aiohttp, SQLAlchemy) already log through
``logging``, so one formatter makes every line JSON, pytest's ``caplog`` reads
the records as they are, and no second logging system needs configuring in each
worker process. Fields travel as ``extra={"fields": {...}}``.

What a line never holds: a patient identifier, name, NHS number or the values of
a query string. Callers pass route templates and outcomes, not paths or bodies;
an exception is written as its type and stack frames, never its message (which
may quote the data that caused it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from typing import Any, TextIO

import orjson

from carelink.observability.context import current_request_id, instant

LEVELS = ("debug", "info", "warning", "error")

ACCESS = "carelink.access"
SOURCES = "carelink.sources"
CIRCUIT = "carelink.circuit"
READINESS = "carelink.readiness"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: timestamp, level, logger, event, request id, fields.

    >>> import logging
    >>> r = logging.LogRecord("carelink.x", logging.INFO, "", 0, "hello", None, None)
    >>> r.fields = {"status": 200}
    >>> '"event":"hello","status":200' in JsonFormatter().format(r)
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # what a line never holds, logging need not gather for every record
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line = json_line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
        )
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            line["error"] = kind.__name__
            line["traceback"] = "".join(traceback.format_tb(tb))
        return orjson.dumps(line, default=str).decode()


def json_line(
    created: float, level: str, logger: str, event: str, fields: dict[str, Any] | None
) -> dict[str, Any]:
    """What a line says, before any exception: when, how grave, who logged what, the
    request it was logged for and the fields."""
    line: dict[str, Any] = {
        "timestamp": instant(created, 3),
        "level": level.lower(),
        "logger": logger,
        "event": event,
    }
    request_id = current_request_id()
    if request_id is not None:
        line["request_id"] = request_id
    if fields:
        line.update(fields)
    return line


def log_fields(logger: logging.Logger, level: int, event: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, event, extra={"fields": fields})``, made cheaper for the lines
    logged a request at a time: where the line would go only to the gateway's own
    handler (``own_handler``), it is formatted and handed to that handler directly, the
    same line without a ``LogRecord`` or the handler chain; otherwise (a test's capture,
    another configuration) it is logged the ordinary way."""
    if not logger.isEnabledFor(level):
        return
    handler = own_handler(logger, level)
    if handler is None:
        # made and handled directly: ``Logger.log`` would walk the stack for a caller the
        # line never shows
        logger.handle(
            logger.makeRecord(logger.name, level, "", 0, event, (), None, extra={"fields": fields})
        )
        return
    line = json_line(time.time(), logging.getLevelName(level), logger.name, event, fields)
    handler.add(orjson.dumps(line, default=str).decode(), level)


def own_handler(logger: logging.Logger, level: int) -> BufferedLines | None:
    """The one handler a line of ``logger`` at ``level`` reaches, when that is the
    gateway's own (a plain ``BufferedLines`` with the JSON formatter, the one handler
    ``log_config`` sets) with no filter anywhere on the way and a level the line passes;
    else None. (Whether the logger itself is enabled for ``level`` is the caller's
    question: ``Logger.isEnabledFor``.)"""
    found: BufferedLines | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for h in current.handlers:
            if found is not None or type(h) is not BufferedLines or h.filters:
                return None
            if type(h.formatter) is not JsonFormatter:
                return None
            found = h
        current = current.parent if current.propagate else None
    if found is None or level < found.level:
        return None
    return found


#: each (level, logger, event)'s part of a line between its timestamp's value and its
#: request id, as ``json_line`` and ``orjson`` write it, made once (``write_line``)
_HEADS: dict[tuple[int, str, str], bytes] = {}
_HEADS_KEPT = 256


def write_line(
    handler: BufferedLines, created: float, level: int, logger: str, event: str, fields: bytes
) -> None:
    """Hand ``handler`` the very line ``JsonFormatter`` writes for a record of ``logger``
    at ``level`` made at ``created`` (``time.time()``) with ``event`` and fields whose
    JSON object, without its
    braces, is ``fields`` (not empty): written from bytes kept per kind of line, without
    the fields' dict or the line's (``tests/observability/test_logs.py`` holds the two
    to the same bytes)."""
    key = (level, logger, event)
    head = _HEADS.get(key)
    if head is None:
        said = {"level": logging.getLevelName(level).lower(), "logger": logger, "event": event}
        head = b'",' + orjson.dumps(said)[1:-1]
        if len(_HEADS) >= _HEADS_KEPT:
            _HEADS.clear()
        _HEADS[key] = head
    request_id = current_request_id()
    if request_id is None:
        parts = [b'{"timestamp":"', instant(created, 3).encode(), head, b",", fields, b"}"]
    else:
        parts = [
            b'{"timestamp":"',
            instant(created, 3).encode(),
            head,
            b',"request_id":',
            orjson.dumps(request_id),
            b",",
            fields,
            b"}",
        ]
    handler.add(b"".join(parts).decode(), level)


class BufferedLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines written a batch at a time: at most ``interval`` seconds after they were
    logged, at once for a warning or worse (after every line before it, so the order
    holds), when ``limit`` characters are waiting, and when logging shuts down.

    A line a request is one write system call a request on the serving loop; measured
    on the lookup, that and the formatting were a sixth of the loop's time. A flusher
    thread wakes only while lines wait, so an idle gateway does nothing.
    """

    def __init__(
        self, stream: TextIO | None = None, interval: float = 0.1, limit: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._waiting = threading.Event()
        #: the fork count (``_forks``) of the process whose flusher thread runs: it runs
        #: until the process ends, and a forked child has the handler but not the
        #: thread, so it starts its own
        self._flusher = -1

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line, record.levelno)

    def add(self, line: str, level: int) -> None:
        """Queue a formatted line (``level``: its logging level)."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)  # its terminator added when written
            self._size += len(line) + 1
            urgent = level >= logging.WARNING or self._size >= self.limit
        if urgent:
            self.flush()
            return
        if self._flusher != _forks:  # none yet, or this is a forked copy without it
            self._flusher = _forks
            threading.Thread(target=self._run, name="log-lines", daemon=True).start()
        if not self._waiting.is_set():  # setting it takes a lock, a line at a time
            self._waiting.set()

    def _run(self) -> None:
        while True:
            self._waiting.wait()
            time.sleep(self.interval)
            self._waiting.clear()
            self.flush()

    def close(self) -> None:
        """Write what waits, then close (``logging.shutdown`` flushes first too)."""
        self.flush()
        super().close()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines, self._size = self._lines, [], 0
            if lines and self.stream is not None:
                # a closed or broken stream loses the lines, as any handler's would:
                # logging must never fail the request that logged
                with contextlib.suppress(Exception):
                    end = self.terminator
                    self.stream.write(end.join(lines) + end)
                    self.stream.flush()


#: how many times this process is a fork away from the one that imported this module
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the gateway process (and each uvicorn worker,
    which applies it on start): every logger's lines as JSON on stderr at ``level``;
    uvicorn's own access log off, as the gateway writes its own."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "()": f"{__name__}.BufferedLines",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            "carelink": {"level": upper},
            "uvicorn": {"level": upper},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"level": "WARNING", "propagate": False},
        },
    }
