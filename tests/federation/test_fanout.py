"""Fan-out: budgets, failures reported per source, circuit breaking.

The sources here are small test sources implementing the ``Source``
protocol (the thing under test is the fan-out, not an adapter); the
end-to-end fault tests with real simulators are in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from carelink.errors import SourceBadPayload, SourceUnavailable
from carelink.federation.fanout import CircuitBreaker, FanOut, Request
from carelink.sources.base import SourceAnswer, SourcePerson


class ScriptedSource:
    """Answers after ``delay`` seconds, or raises ``error``."""

    def __init__(self, name: str, delay: float = 0.0, error: Exception | None = None) -> None:
        self.name = name
        self.delay = delay
        self.error = error
        self.calls = 0

    async def fetch_record(self, local_id, patient_ref, types, nhs_number=None) -> SourceAnswer:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return SourceAnswer(
            [{"resourceType": "Flag", "id": f"{self.name}-{local_id}"}],
            "v1",
            "2026-01-01T00:00:00Z",
        )

    async def people(self) -> AsyncIterator[SourcePerson]:  # pragma: no cover - unused here
        return
        yield


def run(fan: FanOut, names: list[str], deadline: float | None = None):
    reqs = [Request(n, "L1", None) for n in names]
    return asyncio.run(fan.gather(reqs, "Patient/p", None, deadline))


def test_every_configured_source_is_reported_and_unasked_ones_are_not_known():
    fan = FanOut({"a": ScriptedSource("a"), "b": ScriptedSource("b")}, budget=1.0)
    results = {r.source: r for r in run(fan, ["a"])}
    assert results["a"].status == "ok"
    assert results["a"].resources[0]["id"] == "a-L1"
    assert results["b"].status == "not-known"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (SourceUnavailable("a", "HTTP 500"), "error"),
        (SourceBadPayload("a", "not JSON"), "error"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_a_failing_source_is_left_out_with_its_reason(error, status):
    fan = FanOut({"a": ScriptedSource("a", error=error), "b": ScriptedSource("b")}, budget=1.0)
    results = {r.source: r for r in run(fan, ["a", "b"])}
    assert results["a"].status == status
    assert results["a"].resources == ()
    assert results["a"].reason
    assert results["b"].status == "ok"


def test_a_slow_source_times_out_within_the_budget():
    fan = FanOut({"slow": ScriptedSource("slow", delay=5), "b": ScriptedSource("b")}, budget=0.2)
    import time

    t0 = time.monotonic()
    results = {r.source: r for r in run(fan, ["slow", "b"])}
    assert time.monotonic() - t0 < 1.0
    assert results["slow"].status == "timeout"
    assert results["b"].status == "ok"


def test_a_shorter_deadline_wins_over_the_budget():
    fan = FanOut({"s": ScriptedSource("s", delay=0.5)}, budget=2.0)
    assert run(fan, ["s"], deadline=0.1)[0].status == "timeout"


def test_circuit_opens_after_repeated_failures_and_costs_no_call():
    source = ScriptedSource("a", error=SourceUnavailable("a", "down"))
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, reset_after=10, clock=lambda: now[0])
    fan = FanOut({"a": source}, budget=1.0, breakers={"a": breaker})
    run(fan, ["a"])
    run(fan, ["a"])
    assert breaker.state == "open"
    result = run(fan, ["a"])[0]
    assert result.status == "circuit-open"
    assert source.calls == 2


@pytest.mark.parametrize(
    "error", [SourceBadPayload("a", "not JSON"), KeyError("id")], ids=["bad-payload", "bug"]
)
def test_unreadable_answers_never_open_the_circuit(error):
    """One person's bad data says the source is up: it must not shut it for everyone."""
    source = ScriptedSource("a", error=error)
    breaker = CircuitBreaker(threshold=2, reset_after=10, clock=lambda: 0.0)
    fan = FanOut({"a": source}, budget=1.0, breakers={"a": breaker})
    statuses = [run(fan, ["a"])[0].status for _ in range(5)]
    assert statuses == ["error"] * 5
    assert breaker.state == "closed"
    assert source.calls == 5


def test_what_a_source_skipped_is_carried_to_its_result():
    class Partial(ScriptedSource):
        async def fetch_record(self, local_id, patient_ref, types, nhs_number=None):
            return SourceAnswer([], "v", "2026-01-01T00:00:00Z", ("Observation entry 2: no id",))

    result = run(FanOut({"a": Partial("a")}, budget=1.0), ["a"])[0]
    assert result.status == "ok"
    assert result.skipped == ("Observation entry 2: no id",)


def test_circuit_half_opens_after_the_reset_and_closes_on_success():
    source = ScriptedSource("a", error=SourceUnavailable("a", "down"))
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, reset_after=10, clock=lambda: now[0])
    fan = FanOut({"a": source}, budget=1.0, breakers={"a": breaker})
    run(fan, ["a"])
    assert breaker.state == "open"
    now[0] = 11.0
    assert breaker.state == "half-open"
    source.error = None
    assert run(fan, ["a"])[0].status == "ok"
    assert breaker.state == "closed"


def test_a_cancelled_fan_out_stops_its_fetches_and_frees_a_half_open_trial():
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, reset_after=5.0, clock=lambda: now[0])
    breaker.record(False)  # open
    now[0] = 10.0  # past the reset: the next request is the half-open trial
    slow = ScriptedSource("a", delay=5.0)
    fan = FanOut({"a": slow}, budget=10.0, breakers={"a": breaker})

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(fan.gather([Request("a", "L1", None)], "Patient/p", None))
        await asyncio.sleep(0.05)
        assert breaker.trial_in_flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # no fetch task of the fan-out is left running
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []

    asyncio.run(cancel_midway())
    assert slow.calls == 1
    assert breaker.allow()  # a new trial may go: the source is not shut for good


class Heard:
    """A ``Watcher`` that writes down what it is told."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []
        self.circuits: list[tuple[str, str]] = []

    def answered(self, source, outcome, latency_ms, reason) -> None:
        assert latency_ms >= 0
        self.answers.append((source, outcome))

    def circuit(self, source, state) -> None:
        self.circuits.append((source, state))


def test_the_watcher_hears_each_asked_source_and_not_the_unknown_ones():
    heard = Heard()
    sources = {
        "a": ScriptedSource("a"),
        "b": ScriptedSource("b", error=SourceUnavailable("b", "HTTP 500")),
        "c": ScriptedSource("c"),
    }
    run(FanOut(sources, budget=1.0, watcher=heard), ["a", "b"])
    assert sorted(heard.answers) == [("a", "ok"), ("b", "error")]


def test_a_breaker_tells_each_state_it_enters_once():
    """closed -> open at the threshold, half-open when the trial goes, open again when it
    fails, closed when a later trial succeeds; nothing while the state stays the same."""
    now = [0.0]
    told: list[str] = []
    breaker = CircuitBreaker(2, 5.0, clock=lambda: now[0], on_change=told.append)
    breaker.record(False)
    assert told == []
    breaker.record(False)
    breaker.record(False)
    assert told == ["open"]
    assert not breaker.allow()
    now[0] = 6.0
    assert breaker.allow()
    breaker.record(False)
    now[0] = 12.0
    assert breaker.allow()
    breaker.record(True)
    breaker.record(True)
    assert told == ["open", "half-open", "open", "half-open", "closed"]


def test_a_circuit_opened_by_the_fan_out_is_told_to_the_watcher_by_source():
    heard = Heard()
    breakers = {"down": CircuitBreaker(2, 60.0, on_change=lambda s: heard.circuit("down", s))}
    fan = FanOut(
        {"down": ScriptedSource("down", error=SourceUnavailable("down", "HTTP 503"))},
        budget=1.0,
        breakers=breakers,
        watcher=heard,
    )
    for _ in range(3):
        run(fan, ["down"])
    assert heard.circuits == [("down", "open")]
    assert heard.answers == [("down", "error"), ("down", "error"), ("down", "circuit-open")]


class PerRecordDelay(ScriptedSource):
    """One source holding several of a person's records, each answering after its own delay."""

    def __init__(self, name: str, delays: dict[str, float]) -> None:
        super().__init__(name)
        self.delays = delays

    async def fetch_record(self, local_id, patient_ref, types, nhs_number=None) -> SourceAnswer:
        await asyncio.sleep(self.delays[local_id])
        flag = {"resourceType": "Flag", "id": f"{self.name}-{local_id}"}
        return SourceAnswer([flag], local_id, "2026-01-01T00:00:00Z")


@pytest.mark.parametrize("first_is_slow", [True, False])
def test_one_sources_answers_come_back_in_the_order_asked_not_the_order_they_finish(
    first_is_slow,
):
    """A person with two records at one source: the results keep the requests' order
    whichever finishes first, so the same answers always make the same record (the
    record memo and each answer's Provenance rely on it)."""
    delays = {"L1": 0.05, "L2": 0.0} if first_is_slow else {"L1": 0.0, "L2": 0.05}
    fan = FanOut({"acute": PerRecordDelay("acute", delays), "gp": ScriptedSource("gp")}, 1.0)
    reqs = [Request("acute", "L1", None), Request("gp", "L1", None), Request("acute", "L2", None)]
    results = asyncio.run(fan.gather(reqs, "Patient/p", None))
    assert [(r.source, r.version) for r in results] == [
        ("acute", "L1"),
        ("acute", "L2"),
        ("gp", "v1"),
    ]


def test_a_mixed_fan_out_reports_each_source_and_leaves_no_fetch_running():
    """One source answers, one fails, one is too slow: each is reported as such, in the
    sources' order, and the slow one's fetch is stopped (it hears the cancellation) before
    the fan-out returns; nothing of the fan-out is left running after it."""
    cancelled: list[str] = []

    class Heeding(ScriptedSource):
        async def fetch_record(self, local_id, patient_ref, types, nhs_number=None):
            try:
                return await super().fetch_record(local_id, patient_ref, types, nhs_number)
            except asyncio.CancelledError:
                cancelled.append(self.name)
                raise

    sources = {
        "a": Heeding("a"),
        "b": Heeding("b", error=SourceUnavailable("b", "HTTP 503")),
        "c": Heeding("c", delay=5.0),
        "d": Heeding("d"),
    }
    fan = FanOut(sources, budget=0.2)

    async def go():
        got = await fan.gather([Request(n, "L1", None) for n in ("c", "b", "a")], "Patient/p", None)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return got, others

    results, others = asyncio.run(go())
    assert [(r.source, r.status) for r in results] == [
        ("a", "ok"),
        ("b", "error"),
        ("c", "timeout"),
        ("d", "not-known"),
    ]
    assert results[1].reason == "HTTP 503"
    assert results[2].reason == "no answer within 200 ms"
    assert cancelled == ["c"]
    assert others == []
