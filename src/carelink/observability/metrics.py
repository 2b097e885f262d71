"""Prometheus metrics: what the gateway counts, and the text a scrape reads.

Every metric is labelled by route template, source name, outcome or state,
never by anything a request carried (no ids, no query values), so the
exposition holds no patient data and its size stays bounded.

One process: the metrics live in the app's own ``CollectorRegistry``. Several
worker processes (``carelink serve --workers N``): prometheus-client's
multiprocess mode, where each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any worker sums them
(``prepare_multiprocess`` sets the directory up before the workers start).
Values read live at scrape time (export jobs by state) come from the shared
database, so they are right whichever worker answers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: seconds: the lookup path answers in tens of milliseconds, $everything and exports longer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: events per audit group commit
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: circuit states as gauge values (higher is worse, so ``max`` over workers is meaningful)
CIRCUIT_STATES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


class Metrics:
    """The gateway's metrics, registered in ``registry`` (a new one by default, so
    several apps in one process, as in tests, never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        http = ["method", "route", "status"]
        self.requests = Counter(
            "carelink_http_requests", "HTTP requests answered", http, registry=r
        )
        self.request_seconds = Histogram(
            "carelink_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            http,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.source_calls = Counter(
            "carelink_source_requests",
            "Requests to source systems by outcome (circuit-open: not asked)",
            ["source", "outcome"],
            registry=r,
        )
        self.source_seconds = Histogram(
            "carelink_source_request_duration_seconds",
            "Time a source took to answer, fail or time out",
            ["source", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.circuit_state = Gauge(
            "carelink_source_circuit_state",
            "Circuit breaker state per source: 0 closed, 1 half-open, 2 open",
            ["source"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuit_changes = Counter(
            "carelink_source_circuit_changes",
            "Circuit breaker state changes, by the state entered",
            ["source", "state"],
            registry=r,
        )
        self.audit_seconds = Histogram(
            "carelink_audit_commit_duration_seconds",
            "Time to commit one batch of audit events durably",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_batch = Histogram(
            "carelink_audit_commit_events",
            "Audit events per group commit",
            buckets=BATCH_BUCKETS,
            registry=r,
        )


#: a histogram (or one of its labelled children), ready to observe without its checks
#: (``observer_of``): its sum's ``inc``, each bucket's ``inc`` and the buckets' bounds
Observer = tuple[Callable[[float], None], list[Callable[[float], None]], list[float]]
#: a counter's child's ``inc`` and a histogram's child's ``Observer`` (``series_of``)
Series = tuple[Callable[[float], None], Observer]


def observer_of(histogram: Histogram) -> Observer:
    """A histogram (or its child, ``.labels(...)``) made ready to observe ``amount``
    without its checks: ``add(amount)`` and ``buckets[bisect_left(bounds, amount)](1)``
    (``observe``), what ``Histogram.observe`` does on the same values (one process or
    many), less its check that a labelled histogram is observed through a child.
    prometheus-client's own attributes, at the version the lock file pins;
    ``tests/observability/test_metrics.py`` holds the two ways to the same exposition."""
    return histogram._sum.inc, [b.inc for b in histogram._buckets], list(histogram._upper_bounds)


def series_of(counter: Counter, histogram: Histogram) -> Series:
    """A counter's and a histogram's children, ready to count (``count(1)``: what
    ``Counter.inc`` does, less its checks of the child and the amount) and to observe
    (``observer_of``)."""
    return counter._value.inc, observer_of(histogram)


def observe(observer: Observer, amount: float) -> None:
    """``Histogram.observe(amount)`` on an ``observer_of``'s histogram."""
    add, buckets, bounds = observer
    add(amount)
    buckets[bisect_left(bounds, amount)](1)


class LiveCounts(Collector):
    """A gauge family read at scrape time: ``read()`` gives a count per label value;
    every value of ``known`` is reported, 0 when absent, so alerts see a series. When
    ``read()`` fails (the database is down) the family is left out of that scrape
    rather than failing the scrape or reporting made-up zeros."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, int]],
        known: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.read = read
        self.known = tuple(known)

    def collect(self) -> Iterator[Metric]:
        try:
            read = dict(self.read())
        except Exception:  # the rest of the scrape is still worth having
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        counts = dict.fromkeys(self.known, 0) | read
        for value, count in sorted(counts.items()):
            family.add_metric([value], float(count))
        yield family


def exposition(metrics: Metrics, live: Iterable[Collector] = ()) -> bytes:
    """The Prometheus text exposition: this process's metrics (or every worker's, in
    multiprocess mode) followed by the ``live`` collectors."""
    folder = os.environ.get(MULTIPROC_DIR)
    if folder:
        merged = CollectorRegistry()
        MultiProcessCollector(merged, folder)  # type: ignore[no-untyped-call]
        text = generate_latest(merged)
    else:
        text = generate_latest(metrics.registry)
    now = CollectorRegistry()
    for collector in live:
        now.register(collector)
    return text + generate_latest(now)


def prepare_multiprocess(workers: int) -> str | None:
    """Before starting ``workers`` processes: with more than one, make sure
    ``PROMETHEUS_MULTIPROC_DIR`` names an empty directory (a fresh temporary one unless
    the operator set it, from which a previous run's ``*.db`` value files are removed)
    and return it. The workers inherit it through the environment; a temporary one is
    removed when this (the supervising) process exits.

    A worker that dies leaves its files: its counters stay in the sums (as counters
    should); its circuit-state gauge stays too until the directory is cleared.
    """
    if workers <= 1:
        return None
    folder = os.environ.get(MULTIPROC_DIR)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="carelink-metrics-")
        os.environ[MULTIPROC_DIR] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
