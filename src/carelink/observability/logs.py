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

import logging
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

from carelink.observability.context import current_request_id

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

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            line["error"] = kind.__name__
            line["traceback"] = "".join(traceback.format_tb(tb))
        return orjson.dumps(line, default=str).decode()


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
                "class": "logging.StreamHandler",
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
