"""``carelink serve`` and ``carelink simulate``: the gateway's workers, and a simulated
source system serving HTTP or pushing its HL7 v2 feed."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from carelink.cli.codes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, UsageError, fail

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess folder

if TYPE_CHECKING:
    from carelink.simulators.fhir_load import LoadReport


def serve(args: argparse.Namespace) -> int:
    if args.workers < 1:  # before the app's imports: a usage error is answered at once
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    # The checks below build an app in this (the supervising) process: its metrics must
    # stay in memory, not become a third writer beside the workers in the shared folder.
    # prometheus_client reads the variable when it is first imported, just below.
    shared = os.environ.pop(MULTIPROC_DIR, None)
    from carelink.observability import prepare_multiprocess
    from carelink.settings import Settings
    from carelink.start import WorkerFailed, preflight, serve, source_warnings

    if "CARELINK_AUDIENCE" not in os.environ:
        # tokens are for this gateway: its FHIR base as served here
        os.environ["CARELINK_AUDIENCE"] = f"http://{args.host}:{args.port}/fhir"
    settings = Settings.from_env()
    preflight(settings)  # everything a worker needs, checked once before any starts
    for warning in source_warnings(settings):  # a wrong kind of source: exit 4 here
        print(f"carelink: warning: {warning}", file=sys.stderr)
    if shared is not None:
        os.environ[MULTIPROC_DIR] = shared
    prepare_multiprocess(args.workers)  # each worker's metrics in files a scrape sums
    try:
        serve(settings, args.host, args.port, args.workers, args.log_level or settings.log_level)
    except WorkerFailed as exc:
        fail(str(exc))
        return EXIT_ERROR
    return EXIT_OK


def simulate(args: argparse.Namespace) -> int:
    import uvicorn

    if args.feed_to:
        return _push_feed(args)
    if args.port is None:
        print("carelink: simulate needs --port (or --feed-to)", file=sys.stderr)
        return EXIT_USAGE
    from carelink.serving import PROTOCOL
    from carelink.simulators.base import Behaviour
    from carelink.simulators.registry import create_simulator

    behaviour = Behaviour(
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        malformed_rate=args.malformed_rate,
        down=args.down,
    )
    app = create_simulator(
        args.name, seed=args.seed, size=args.size, behaviour=behaviour, data=args.data
    )
    report = getattr(app.state, "load_report", None) if args.data is not None else None
    if report is not None:
        _print_load_report(args.data, report)
    # The population is loaded: keep the collector off it (see carelink.app.GC_THRESHOLDS).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # httptools with each answer's head and body in one write, as the gateway serves: a
    # second write per answer costs the machine a loopback packet on either side
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=PROTOCOL,
    )
    return EXIT_OK


def _print_load_report(path: Path, report: LoadReport, shown: int = 100) -> None:
    """What ``--data`` loaded, then each resource served without an id or skipped, by
    file and line (counts and places only, never the data)."""
    print(f"carelink simulate: {path}: {report.summary()}", file=sys.stderr)
    problems = [*report.without_id, *report.skipped]
    for problem in problems[:shown]:
        print(f"  {problem}", file=sys.stderr)
    if len(problems) > shown:
        print(f"  ... and {len(problems) - shown} more", file=sys.stderr)


def _push_feed(args: argparse.Namespace) -> int:
    """``simulate community --feed-to HOST:PORT [--replay FILE]``: send, report, exit."""
    from carelink.simulators.community import feed
    from carelink.simulators.feed import send_feed, split_file

    host, _, port = args.feed_to.rpartition(":")
    if args.name != "community" or not host or not port.isdigit():
        print("carelink: --feed-to HOST:PORT is for the community simulator", file=sys.stderr)
        return EXIT_USAGE
    if args.replay is not None:
        messages = split_file(args.replay.read_text(encoding="utf-8"))
    else:
        messages = list(feed(args.seed, args.size))
    report = asyncio.run(send_feed(messages, host, int(port)))
    print(f"carelink simulate: feed to {args.feed_to}: {report.summary()}")
    return EXIT_OK
