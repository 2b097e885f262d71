"""The supervisor's health check (``carelink.start.answers``): a worker that exits with
a ping unanswered is seen as gone at once, not after the whole health-check timeout."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from types import SimpleNamespace

from carelink.start import answers


def _silent(conn: Connection, seconds: float) -> None:
    time.sleep(seconds)  # holds its end of the pipe, never answers, then exits


def _answering(conn: Connection) -> None:
    while True:
        conn.recv()
        conn.send(False)


def _worker(target, *args):  # type: ignore[no-untyped-def]
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(target=target, args=(child, *args))
    process.start()
    # like uvicorn's supervisor, this process keeps the child's end open too, so the
    # worker's exit gives no end-of-file on the pipe
    return SimpleNamespace(process=process, parent_conn=parent, child_conn=child)


def test_a_worker_that_exits_with_the_ping_unanswered_is_gone_long_before_the_timeout():
    worker = _worker(_silent, 1.0)
    try:
        start = time.monotonic()
        assert answers(worker, timeout=30) is False  # type: ignore[arg-type]
        took = time.monotonic() - start
        assert not worker.process.is_alive()
        assert took < 15, f"waited {took:.1f} s of a 30 s timeout for a worker that had exited"
    finally:
        worker.process.join(5)


def test_a_worker_that_answers_is_alive():
    worker = _worker(_answering)
    try:
        for _ in range(3):
            assert answers(worker, timeout=10) is True  # type: ignore[arg-type]
    finally:
        worker.process.kill()
        worker.process.join(5)


def test_a_worker_that_runs_but_never_answers_is_given_up_at_the_timeout():
    worker = _worker(_silent, 60.0)
    try:
        assert answers(worker, timeout=0.5) is False  # type: ignore[arg-type]
        assert worker.process.is_alive()  # still running: the caller kills it
    finally:
        worker.process.kill()
        worker.process.join(5)


def test_a_worker_already_gone_is_not_pinged():
    worker = _worker(_silent, 0.0)
    worker.process.join(10)
    assert answers(worker, timeout=30) is False  # type: ignore[arg-type]
