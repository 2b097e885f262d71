"""Observability: the current request's id, structured JSON logs and Prometheus metrics.

Imports nothing of carelink (it sits at the bottom of the layers, beside ``fhir``
and ``storage``), so the source adapters can forward the request id and the HTTP
edge, the fan-out and the audit can report to it without an upward arrow.
"""

from carelink.observability.context import (
    HEADER,
    accept_request_id,
    bind,
    current_request_id,
    instant,
    new_id,
    sources_asked,
    unbind,
)
from carelink.observability.logs import JsonFormatter, log_config
from carelink.observability.metrics import (
    CONTENT_TYPE,
    LiveCounts,
    Metrics,
    exposition,
    prepare_multiprocess,
)
from carelink.observability.readiness import Readiness
from carelink.observability.telemetry import Telemetry

__all__ = [
    "CONTENT_TYPE",
    "HEADER",
    "JsonFormatter",
    "LiveCounts",
    "Metrics",
    "Readiness",
    "Telemetry",
    "accept_request_id",
    "bind",
    "current_request_id",
    "exposition",
    "instant",
    "log_config",
    "new_id",
    "prepare_multiprocess",
    "sources_asked",
    "unbind",
]
