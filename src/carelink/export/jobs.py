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
from carelink.export.pipeline import Cohort, ExtractSpec, Output, run
from carelink.export.tables import to_parquet, write_errors
from carelink.federation import SharedRecord
from carelink.storage import JobRow, JobStore, OptOutStore, describe, is_unavailable
from carelink.storage.export_store import LEASE_SECONDS

log = logging.getLogger("carelink.export")
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
        """Expire exports asked for more than the retention time ago and delete their
        files (in any gateway process: whichever sweeps first); the expired job ids."""
        expired = self.jobs.expire(self.clock() - self.ttl)
        for job_id in expired:
            shutil.rmtree(self.exports / job_id, ignore_errors=True)
        return expired

    async def run_one(self, job: JobRow) -> None:
        """Run one claimed job to completion, error or cancellation."""
        directory = self.exports / job.id
        shutil.rmtree(directory, ignore_errors=True)  # a resumed job starts again
        request = JobRequest.from_bytes(job.request)
        out = Output(directory, tabulate=request.output_format == "parquet")

        state = {"progress": "starting", "live": True}

        async def progress(done: int, total: int) -> bool:
            await asyncio.sleep(0)
            state["progress"] = f"{done} of {total} people"
            return bool(state["live"])

        async def keep_lease() -> None:
            # The lease is renewed on a clock, not per person: one person's read (with
            # retries) may take longer than a lease, and the job must not be taken over.
            # A renewal that fails (the database is away) is tried again at the next tick.
            while state["live"]:
                with contextlib.suppress(Exception):
                    state["live"] = await asyncio.to_thread(
                        self.jobs.heartbeat, job.id, str(state["progress"]), self.clock()
                    )
                await asyncio.sleep(LEASE_SECONDS / 3)

        lease = asyncio.create_task(keep_lease())
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
            await asyncio.to_thread(self.jobs.finish, job.id, "complete", orjson.dumps(manifest))
        except Refused as exc:
            shutil.rmtree(directory, ignore_errors=True)  # refused, not shipped
            await asyncio.to_thread(
                self.jobs.finish, job.id, "error", _error_manifest(str(exc), exc.report.as_json())
            )
        except ExportError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if str(exc) != "cancelled":
                await asyncio.to_thread(
                    self.jobs.finish, job.id, "error", _error_manifest(str(exc), None)
                )
        except Exception as exc:  # any failure ends this job, never the runner
            shutil.rmtree(directory, ignore_errors=True)
            if is_unavailable(exc):
                raise  # not the job's fault: it is run again once the database is back
            log.warning("export job %s failed: %s", job.id, _why(exc))
            await asyncio.to_thread(
                self.jobs.finish, job.id, "error", _error_manifest("the extract failed", None)
            )
        finally:
            state["live"] = False
            lease.cancel()
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
