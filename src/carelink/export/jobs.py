"""Bulk Data export jobs: queued in the database, run by whichever gateway process
claims them, resumed from the start after a restart.

Each job's files live in ``<exports>/<job id>/``; the manifest lists them and
says what was done (profile, project, opt-outs excluded, risk report).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from carelink.anonymise.disclosure import Refused
from carelink.consent import Guard
from carelink.errors import ExportError
from carelink.export.spec import Cohort, ExtractSpec
from carelink.export.tables import Output, to_parquet, write_errors
from carelink.federation import SharedRecord
from carelink.storage import JobRow, JobStore, OptOutStore, describe, is_unavailable
from carelink.storage.export_store import LEASE_SECONDS

log = logging.getLogger("carelink.export")
#: how often a running job's state is read, so a cancel taken by another process stops it
CHECK_SECONDS = 0.25
#: how long a cancel waits for another process to stop the job it holds
STOP_WAIT = 5.0
Json = dict[str, Any]


@dataclass(frozen=True)
class JobRequest:
    """A kick-off, as stored with the job."""

    spec: ExtractSpec
    request_url: str
    output_format: str  # ndjson | parquet

    def to_bytes(self) -> bytes:
        s = self.spec
        return orjson.dumps(
            {
                "project": s.project,
                "profile": s.profile,
                "types": sorted(s.types) if s.types is not None else None,
                "since": s.since.isoformat() if s.since else None,
                "typeFilters": s.type_filters,
                "cohort": [s.cohort.kind, s.cohort.value, list(s.cohort.practices)],
                "k": s.k,
                "m": s.m,
                "purpose": s.purpose,
                "request": self.request_url,
                "format": self.output_format,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> JobRequest:
        d = orjson.loads(raw)
        kind, value, *members = d["cohort"]
        spec = ExtractSpec(
            project=d["project"],
            profile=d["profile"],
            types=frozenset(d["types"]) if d["types"] is not None else None,
            since=datetime.fromisoformat(d["since"]) if d["since"] else None,
            type_filters=d["typeFilters"],
            cohort=Cohort(kind, value, tuple(members[0]) if members else ()),
            k=int(d.get("k", 5)),
            m=int(d.get("m", 2)),
            purpose=str(d.get("purpose", ExtractSpec.purpose)),
        )
        return cls(spec, d["request"], d["format"])


class Runner:
    """Claims and runs export jobs in this process, one at a time."""

    def __init__(
        self,
        jobs: JobStore,
        opt_outs: OptOutStore,
        record: SharedRecord,
        exports: Path,
        rules_dir: Path,
        master_key: bytes,
        guard: Guard,
        clock: Callable[[], float] = time.time,
        ttl_hours: float = 24.0,
    ) -> None:
        self.jobs = jobs
        self.opt_outs = opt_outs
        self.record = record
        self.exports = exports
        self.rules_dir = rules_dir
        self.master_key = master_key
        self.guard = guard
        self.clock = clock
        self.ttl = ttl_hours * 3600
        #: the jobs running in this process: the extract's task, and set once it stopped
        self._running: dict[str, tuple[asyncio.Task[bool], asyncio.Event]] = {}

    async def serve(
        self,
        poll: float = 0.5,
        sweep_every: float | None = None,
        backoff: tuple[float, float] = (0.5, 15.0),
    ) -> None:
        """Run jobs until cancelled, and meanwhile delete expired exports' files (every
        minute, or twice per retention time when that is shorter).

        Supervised: nothing but cancellation ends it. While the database cannot be
        used, claims are retried with a growing pause (``backoff``: first and longest)
        and one line is logged when that starts and one when it ends."""
        sweeper = asyncio.create_task(
            self._sweep_forever(sweep_every if sweep_every is not None else min(60.0, self.ttl / 2))
        )
        trouble = _Trouble("export runner: cannot claim jobs", backoff)
        try:
            while True:
                try:
                    job = await asyncio.to_thread(self.jobs.claim, self.clock())
                except Exception as exc:
                    await trouble.failed(exc)
                    continue
                trouble.recovered()
                if job is None:
                    await asyncio.sleep(poll)
                    continue
                try:
                    await self.run_one(job)
                except Exception as exc:  # e.g. its outcome could not be stored: it is
                    # claimed again when its lease runs out, and run from the start
                    log.warning("export job %s not finished: %s", job.id, _why(exc))
        finally:
            sweeper.cancel()

    async def _sweep_forever(self, every: float) -> None:
        trouble = _Trouble("export sweep failed", (every, every))
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # a failed sweep is tried again; jobs go on meanwhile
                await trouble.failed(exc)
                continue
            trouble.recovered()
            await asyncio.sleep(every)

    def sweep(self) -> list[str]:
        """Expire exports finished more than the retention time ago (a cancelled one:
        asked for) and delete their files (in any gateway process: whichever sweeps
        first); the expired job ids."""
        expired = self.jobs.expire(self.clock() - self.ttl)
        for job_id in expired:
            shutil.rmtree(self.exports / job_id, ignore_errors=True)
        return expired

    async def run_one(self, job: JobRow) -> None:
        """Run one claimed job to completion, error or cancellation.

        The extract runs as a task of its own, which a cancel stops at once: ``stop``
        in this process, or the watch here, which reads the job's state every
        ``CHECK_SECONDS``, when another process took the ``DELETE``. Cancelling it
        cancels the source requests in flight (``FanOut.gather``), so no further read,
        page or retry goes out; then its files are deleted and its lease released."""
        stopped = asyncio.Event()
        state: dict[str, Any] = {"progress": "starting", "live": True}
        work = asyncio.create_task(self._extract(job, state))
        self._running[job.id] = (work, stopped)
        watch = asyncio.create_task(self._watch(job.id, state, work))
        try:
            try:
                recorded = await work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the runner itself is stopping: the job is resumed elsewhere
                recorded = False
            if not recorded:  # cancelled: nothing of it stays
                await asyncio.to_thread(self._forget, job.id)
        finally:
            state["live"] = False
            watch.cancel()
            self._running.pop(job.id, None)
            stopped.set()

    async def stop(self, job_id: str, wait: float = STOP_WAIT) -> bool:
        """Once a job is marked cancelled: return when nothing of it runs any more and
        its files are gone (True), or after ``wait`` seconds (False: the process holding
        it has not let go; it stops at its next check, or its lease runs out if it died).

        In this process the extract's task is cancelled here and now; a job another
        process holds is stopped by that process's watch, and its lease released."""
        here = self._running.get(job_id)
        if here is not None:
            work, stopped = here
            work.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), wait)
            return stopped.is_set()
        deadline = time.monotonic() + wait
        while True:
            held = await self.jobs.db.run(self.jobs.holder, job_id)
            if held is None or held[1] < self.clock():
                return True  # never claimed, finished, released, or its holder died
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(CHECK_SECONDS / 5)

    def _forget(self, job_id: str) -> None:
        shutil.rmtree(self.exports / job_id, ignore_errors=True)
        self.jobs.release(job_id)

    async def _watch(self, job_id: str, state: dict[str, Any], work: asyncio.Task[bool]) -> None:
        """Stop ``work`` as soon as the job is no longer running here (cancelled by any
        process), reading its state every ``CHECK_SECONDS``; renew its lease meanwhile.

        The lease is renewed on a clock, not per person: one person's read (with
        retries) may take longer than a lease, and the job must not be taken over. A
        read or renewal that fails (the database is away) is tried again at the next
        tick, and the job goes on meanwhile."""
        renewed = -LEASE_SECONDS
        while state["live"]:
            with contextlib.suppress(Exception):
                if time.monotonic() - renewed >= LEASE_SECONDS / 3:
                    state["live"] = await asyncio.to_thread(
                        self.jobs.heartbeat, job_id, str(state["progress"]), self.clock()
                    )
                    renewed = time.monotonic()
                else:
                    held = await asyncio.to_thread(self.jobs.holder, job_id)
                    state["live"] = held is not None and held[0] == "running"
            if not state["live"]:
                # a job whose outcome is being recorded is not cancelled: the record says
                # whether it was (``JobStore.finish`` records it only if still running),
                # and a cancel then would delete the files of a job recorded complete
                if not state.get("finishing"):
                    work.cancel()
                return
            await asyncio.sleep(CHECK_SECONDS)

    async def _extract(self, job: JobRow, state: dict[str, Any]) -> bool:
        """The extract and its manifest; False if its outcome was not recorded because
        the job was cancelled meanwhile (its files are then to be deleted)."""
        directory = self.exports / job.id
        shutil.rmtree(directory, ignore_errors=True)  # a resumed job starts again
        request = JobRequest.from_bytes(job.request)
        out = Output(directory, tabulate=request.output_format == "parquet")

        async def finish(status: str, manifest: bytes) -> bool:
            state["finishing"] = True  # from here the job's own watch leaves it be
            return await asyncio.to_thread(self.jobs.finish, job.id, status, manifest, self.clock())

        async def progress(done: int, total: int) -> bool:
            await asyncio.sleep(0)
            state["progress"] = f"{done} of {total} people"
            return bool(state["live"])

        # the extract's stack (pandas, pyarrow, the anonymiser) is loaded by the first
        # extract, not by every gateway worker at start
        from carelink.export.pipeline import run

        try:
            result = await run(
                self.record,
                request.spec,
                self.master_key,
                self.rules_dir,
                await asyncio.to_thread(self.opt_outs.all),
                out,
                progress,
                guard=self.guard,
            )
            files = sorted(result.counts)
            ext = "parquet" if request.output_format == "parquet" else "ndjson"
            if request.output_format == "parquet":
                for rtype in files:
                    to_parquet(
                        directory / f"{rtype}.ndjson",
                        directory / f"{rtype}.parquet",
                        out.columns[rtype],
                    )
                    (directory / f"{rtype}.ndjson").unlink()
            manifest = {
                "transactionTime": datetime.fromtimestamp(job.created, UTC).isoformat(),
                "request": request.request_url,
                "requiresAccessToken": True,
                "output": [
                    {
                        "type": rtype,
                        "url": f"{rtype}.{ext}",
                        "count": result.counts[rtype],
                    }
                    for rtype in files
                ],
                "error": write_errors(directory, result.errors()),
                "extension": {"carelink": result.manifest_extension()},
            }
            return await finish("complete", orjson.dumps(manifest))
        except Refused as exc:
            shutil.rmtree(directory, ignore_errors=True)  # refused, not shipped
            return await finish("error", _error_manifest(str(exc), exc.report.as_json()))
        except ExportError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if str(exc) == "cancelled":
                return False
            return await finish("error", _error_manifest(str(exc), None))
        except Exception as exc:  # any failure ends this job, never the runner
            if is_unavailable(exc):
                # not the job's fault: it is run again once the database is back, from the
                # start (its files replaced), unless the database did record it complete
                # and only the answer was lost: then its files are those the manifest names
                raise
            shutil.rmtree(directory, ignore_errors=True)
            log.warning("export job %s failed: %s", job.id, _why(exc))
            return await finish("error", _error_manifest("the extract failed", None))
        finally:
            with contextlib.suppress(Exception):
                out.close()


class _Trouble:
    """A failure that repeats (the database is away): one log line when it starts, one
    when it ends, and a pause that doubles up to a limit in between."""

    def __init__(self, what: str, backoff: tuple[float, float]) -> None:
        self.what = what
        self.first, self.longest = backoff
        self.pause = 0.0
        self.since = 0.0

    async def failed(self, exc: BaseException) -> None:
        if not self.pause:
            self.since = time.monotonic()
            log.warning("%s: %s; retrying until it works", self.what, _why(exc))
        self.pause = min(self.longest, self.pause * 2 if self.pause else self.first)
        await asyncio.sleep(self.pause)

    def recovered(self) -> None:
        if self.pause:
            took = time.monotonic() - self.since
            log.warning("%s: works again after %.1f s", self.what, took)
            self.pause = 0.0


def _why(exc: BaseException) -> str:
    """One line, without data: what kind of failure, and the database's reason if any."""
    return describe(exc) if is_unavailable(exc) else type(exc).__name__


def _error_manifest(message: str, risk: Json | None) -> bytes:
    outcome: Json = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "processing", "diagnostics": message}],
    }
    body: Json = {"outcome": outcome}
    if risk is not None:
        body["risk"] = risk
    return orjson.dumps(body)
