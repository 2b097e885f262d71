"""Ask every source at once, within a time budget, with circuit breaking.

A source that fails, hangs or sends garbage is left out and reported; it
never fails the request. A source whose circuit is open is not asked at all
(a dead source costs no waiting); after ``reset_after`` seconds one trial
request is let through (half-open). Only failures to reach a source
(connection errors, HTTP errors, timeouts) count towards opening its circuit;
an answer that cannot be read is one person's problem, not the source's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from carelink.errors import (
    SourceError,
    SourceNotAsked,
    SourceRefused,
    SourceTimeout,
    SourceUnavailable,
)
from carelink.sources.base import Json, Source, SourceAnswer

Clock = Callable[[], float]

OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"
CIRCUIT_OPEN = "circuit-open"
NOT_KNOWN = "not-known"
#: the source declined (consent, access, no such patient), saying why
REFUSED = "refused"
#: the gateway could not ask the source (GP Connect without a traced NHS number)
NOT_ASKED = "not-asked"


@dataclass(frozen=True)
class Request:
    """One source to ask about one person."""

    source: str
    local_id: str
    nhs_number: str | None


@dataclass(frozen=True)
class SourceResult:
    """What happened at one source."""

    source: str
    status: str  # ok | timeout | error | circuit-open | not-known | refused | not-asked
    latency_ms: float
    resources: tuple[Json, ...] = ()
    version: str = ""
    as_of: str | None = None
    reason: str | None = None
    skipped: tuple[str, ...] = ()  # resources the adapter left out of an ok answer, and why
    notes: tuple[str, ...] = ()  # what the source said about its answer (warnings)


class Watcher(Protocol):
    """Who hears how each source fared and how each circuit changed (the gateway's
    metrics and logs); the fan-out works the same without one."""

    def answered(self, source: str, outcome: str, latency_ms: float, reason: str | None) -> None:
        """``source`` was asked (or skipped, ``circuit-open``) with this outcome."""

    def circuit(self, source: str, state: str) -> None:
        """``source``'s circuit entered ``state`` (closed | half-open | open)."""


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; half-opens after ``reset_after`` s.

    ``on_change(state)`` is told each state it enters: ``open`` when the failures reach
    the threshold (or a half-open trial fails), ``half-open`` when a trial request is let
    through, ``closed`` when a request succeeds after the circuit was not closed.
    """

    def __init__(
        self,
        threshold: int = 3,
        reset_after: float = 5.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.clock = clock
        self.on_change = on_change
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self._told = "closed"

    def _tell(self, state: str) -> None:
        if state != self._told:
            self._told = state
            if self.on_change is not None:
                self.on_change(state)

    def allow(self) -> bool:
        """May a request go to the source now?"""
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.reset_after and not self.trial_in_flight:
            self.trial_in_flight = True
            self._tell("half-open")
            return True
        return False

    def abandon(self) -> None:
        """A request that was allowed was given up by its caller before any outcome (it was
        cancelled): no outcome to note, but a half-open trial is over, so another may go."""
        self.trial_in_flight = False

    def record(self, success: bool) -> None:
        """Note the outcome of a request that was allowed."""
        self.trial_in_flight = False
        if success:
            self.failures = 0
            self.opened_at = None
            self._tell("closed")
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()
            self._tell("open")

    @property
    def state(self) -> str:
        """closed | open | half-open"""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_after else "open"


class FanOut:
    """The sources, their breakers and the default budget; ``watcher`` hears each
    source's outcome (not the sources the person has no record at)."""

    def __init__(
        self,
        sources: Mapping[str, Source],
        budget: float = 0.8,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        clock: Clock = time.monotonic,
        watcher: Watcher | None = None,
    ) -> None:
        self.sources = dict(sources)
        self.budget = budget
        self.clock = clock
        self.watcher = watcher
        self.breakers = (
            dict(breakers)
            if breakers
            else {name: CircuitBreaker(clock=clock) for name in self.sources}
        )
        #: each source's result when the person has no record there: always the same
        self._not_known = {name: SourceResult(name, NOT_KNOWN, 0.0) for name in self.sources}

    async def gather(
        self,
        requests: Sequence[Request],
        patient_ref: str,
        types: frozenset[str] | None,
        deadline: float | None = None,
    ) -> list[SourceResult]:
        """Ask each source in ``requests``; report every configured source's fate."""
        budget = self.budget if deadline is None else min(self.budget, deadline)
        started = self.clock()
        asked = {r.source for r in requests}
        # each result with the position of its request: one source's results (a person
        # with two records there) come back in the order asked, not the order they
        # finished, so the same answers always make the same record
        placed: list[tuple[int, SourceResult]] = [
            (-1, self._not_known.get(name) or SourceResult(name, NOT_KNOWN, 0.0))
            for name in self.sources
            if name not in asked
        ]
        tasks: dict[asyncio.Task[tuple[SourceAnswer, float]], int] = {}
        for i, req in enumerate(requests):
            source = self.sources.get(req.source)
            breaker = self.breakers.get(req.source)
            if source is None or breaker is None:
                placed.append(
                    (i, SourceResult(req.source, ERROR, 0.0, reason="source not configured"))
                )
                continue
            if not breaker.allow():
                placed.append(
                    (
                        i,
                        SourceResult(
                            req.source,
                            CIRCUIT_OPEN,
                            0.0,
                            reason="circuit open after repeated failures",
                        ),
                    )
                )
                continue
            task = asyncio.ensure_future(self._timed(source, req, patient_ref, types, started))
            tasks[task] = i
        if tasks:
            pending = await self._settle(tasks, requests, budget)
            elapsed = (self.clock() - started) * 1000
            for task, i in tasks.items():
                if task in pending:
                    name = requests[i].source
                    self.breakers[name].record(False)
                    late = f"no answer within {budget * 1000:.0f} ms"
                    placed.append((i, SourceResult(name, TIMEOUT, elapsed, reason=late)))
                else:
                    placed.append((i, self._finish(requests[i].source, task, started)))
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        placed.sort(key=lambda p: (p[1].source, p[0]))
        results = [r for _, r in placed]
        if self.watcher is not None:
            for r in results:
                if r.status != NOT_KNOWN:
                    self.watcher.answered(r.source, r.status, r.latency_ms, r.reason)
        return results

    async def _settle(
        self,
        tasks: dict[asyncio.Task[tuple[SourceAnswer, float]], int],
        requests: Sequence[Request],
        budget: float,
    ) -> list[asyncio.Task[tuple[SourceAnswer, float]]]:
        """Wait until every task is done or ``budget`` seconds have passed; the tasks not
        done then, cancelled. One future the tasks count down to and one timer, as
        ``asyncio.wait`` does, without its sets, checks and callbacks removed again: this
        runs once for every ``$everything``."""
        loop = asyncio.get_running_loop()
        settled = loop.create_future()
        left = len(tasks)

        def one_done(_: object) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not settled.done():
                settled.set_result(None)

        for task in tasks:
            task.add_done_callback(one_done)
        timer = loop.call_later(budget, _wake, settled)
        try:
            await settled
        except asyncio.CancelledError:
            # The caller gave up (an extract cancelled, say): stop the fetches and free
            # any half-open trial, or that source would stay shut for everyone.
            for task, i in tasks.items():
                task.cancel()
                self.breakers[requests[i].source].abandon()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            timer.cancel()
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        return pending

    async def _timed(
        self,
        source: Source,
        req: Request,
        patient_ref: str,
        types: frozenset[str] | None,
        started: float,
    ) -> tuple[SourceAnswer, float]:
        try:
            answer = await source.fetch_record(
                req.local_id, patient_ref, types, nhs_number=req.nhs_number
            )
        except SourceError as exc:
            exc.latency_ms = (self.clock() - started) * 1000  # type: ignore[attr-defined]
            raise
        return answer, (self.clock() - started) * 1000

    def _finish(
        self, name: str, task: asyncio.Task[tuple[SourceAnswer, float]], started: float
    ) -> SourceResult:
        exc = task.exception()
        if exc is None:
            answer, latency = task.result()
            self.breakers[name].record(True)
            return SourceResult(
                name,
                OK,
                latency,
                tuple(answer.resources),
                answer.version,
                answer.as_of,
                skipped=tuple(answer.skipped),
                notes=tuple(answer.notes),
            )
        latency = getattr(exc, "latency_ms", (self.clock() - started) * 1000)
        if isinstance(exc, SourceNotAsked):
            # nothing was sent: no evidence either way about the source
            self.breakers[name].abandon()
            return SourceResult(name, NOT_ASKED, latency, reason=exc.reason)
        # Only a source that cannot be reached counts towards opening its circuit: one
        # person's unreadable answer (bad payload, an adapter's surprise) or a refusal
        # (no consent, no such patient) says the source is up, and must not shut it for
        # everyone else.
        self.breakers[name].record(not _unreachable(exc))
        if isinstance(exc, SourceTimeout):
            return SourceResult(name, TIMEOUT, latency, reason=exc.reason)
        if isinstance(exc, SourceRefused):
            return SourceResult(name, exc.status, latency, reason=exc.reason)
        if isinstance(exc, SourceError):
            return SourceResult(name, ERROR, latency, reason=exc.reason)
        return SourceResult(name, ERROR, latency, reason=f"unexpected {type(exc).__name__}")


def _wake(settled: asyncio.Future[None]) -> None:
    """The budget is spent: the fan-out stops waiting."""
    if not settled.done():
        settled.set_result(None)


def _unreachable(exc: BaseException) -> bool:
    """Does this failure say the source cannot be reached (rather than one answer unreadable)?"""
    return isinstance(exc, SourceUnavailable | SourceTimeout | TimeoutError | OSError)
