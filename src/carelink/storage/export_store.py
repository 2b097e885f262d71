"""Export jobs and secondary-use opt-outs, in the shared database.

A job is claimed by one gateway process at a time through a lease that the
process renews while it works; a job whose lease ran out (its process died,
or the gateway restarted) is claimed again and run from the start, so jobs
survive a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.loop_guard import loop_bounded
from carelink.storage.tables import export_jobs, opt_outs

LEASE_SECONDS = 30.0
OPEN = ("accepted", "running")


@dataclass(frozen=True)
class JobRow:
    """One export job."""

    id: str
    client: str
    status: str  # accepted | running | complete | error | cancelled | expired
    request: bytes
    created: float
    lease_until: float
    progress: str
    manifest: bytes | None
    #: when it completed or failed (None while it runs, and for a cancelled job): its
    #: files are kept the retention time from then, however long the extract took
    finished: float | None

    @property
    def kept_from(self) -> float:
        """The instant its retention time counts from."""
        return self.created if self.finished is None else self.finished


@loop_bounded
class JobStore:
    """Export jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, job_id: str, client: str, request: bytes, now: float) -> None:
        """A new job, waiting for a process to claim it."""
        with self.db.engine.begin() as conn:
            conn.execute(
                export_jobs.insert().values(
                    id=job_id,
                    client=client,
                    status="accepted",
                    request=request,
                    created=now,
                    lease_until=0.0,
                    progress="queued",
                    manifest=None,
                )
            )

    def get(self, job_id: str) -> JobRow | None:
        """One job."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(export_jobs).where(export_jobs.c.id == job_id)).first()
        return JobRow(*row) if row else None

    def claim(self, now: float) -> JobRow | None:
        """Take the oldest job nobody holds (new, or whose holder's lease ran out)."""
        with self.db.engine.begin() as conn:
            candidates = conn.execute(
                sa.select(export_jobs.c.id)
                .where(export_jobs.c.status.in_(OPEN), export_jobs.c.lease_until < now)
                .order_by(export_jobs.c.created)
                .limit(5)
            ).all()
            for (job_id,) in candidates:
                taken = conn.execute(
                    export_jobs.update()
                    .where(
                        export_jobs.c.id == job_id,
                        export_jobs.c.status.in_(OPEN),
                        export_jobs.c.lease_until < now,
                    )
                    .values(status="running", lease_until=now + LEASE_SECONDS)
                )
                if taken.rowcount == 1:
                    row = conn.execute(
                        sa.select(export_jobs).where(export_jobs.c.id == job_id)
                    ).first()
                    return JobRow(*row) if row else None
        return None

    def heartbeat(self, job_id: str, progress: str, now: float) -> bool:
        """Renew the lease and say how far along it is; False if the job was cancelled."""
        with self.db.engine.begin() as conn:
            done = conn.execute(
                export_jobs.update()
                .where(export_jobs.c.id == job_id, export_jobs.c.status == "running")
                .values(lease_until=now + LEASE_SECONDS, progress=progress)
            )
            return done.rowcount == 1

    def holder(self, job_id: str) -> tuple[str, float] | None:
        """A job's status and lease (one read by its key): how a process running it sees
        a cancel made by another, and how a cancel sees that the runner has let go."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(export_jobs.c.status, export_jobs.c.lease_until).where(
                    export_jobs.c.id == job_id
                )
            ).first()
        return (str(row[0]), float(row[1])) if row else None

    def release(self, job_id: str) -> None:
        """The process that held a cancelled job has stopped it and deleted its files:
        its lease ends now (``holder`` says so to whoever is waiting on the cancel)."""
        with self.db.engine.begin() as conn:
            conn.execute(
                export_jobs.update()
                .where(export_jobs.c.id == job_id, export_jobs.c.status == "cancelled")
                .values(lease_until=0.0)
            )

    def finish(self, job_id: str, status: str, manifest: bytes, now: float) -> bool:
        """Record the outcome (complete or error), finished at ``now``, unless the job was
        cancelled meanwhile."""
        with self.db.engine.begin() as conn:
            done = conn.execute(
                export_jobs.update()
                .where(export_jobs.c.id == job_id, export_jobs.c.status == "running")
                .values(
                    status=status,
                    manifest=manifest,
                    progress=status,
                    lease_until=0.0,
                    finished=now,
                )
            )
            return done.rowcount == 1

    def expire(self, kept_before: float) -> list[str]:
        """Mark as expired the jobs that finished (complete or error) before
        ``kept_before``, and the cancelled ones asked for before it; their ids (their
        files are to be deleted). Jobs still running are left alone."""
        with self.db.engine.begin() as conn:
            ids = [
                job_id
                for (job_id,) in conn.execute(
                    sa.select(export_jobs.c.id).where(
                        sa.func.coalesce(export_jobs.c.finished, export_jobs.c.created)
                        < kept_before,
                        export_jobs.c.status.in_(("complete", "error", "cancelled")),
                    )
                ).all()
            ]
            if ids:
                conn.execute(
                    export_jobs.update()
                    .where(export_jobs.c.id.in_(ids))
                    .values(status="expired", progress="expired", manifest=None)
                )
        return ids

    def cancel(self, job_id: str) -> bool:
        """Cancel a job (whatever its state); False if there is none."""
        with self.db.engine.begin() as conn:
            done = conn.execute(
                export_jobs.update()
                .where(
                    export_jobs.c.id == job_id,
                    export_jobs.c.status.notin_(("cancelled", "expired")),
                )
                .values(status="cancelled", progress="cancelled")
            )
            return done.rowcount == 1


@loop_bounded
class OptOutStore:
    """Who opted out of secondary use, and how."""

    KINDS = ("ndop", "type1")

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self, rows: Iterable[tuple[str, str]], recorded: str) -> int:
        """Add (NHS number, kind) rows; duplicates are kept once. The number added."""
        added = 0
        with self.db.engine.begin() as conn:
            for nhs, kind in rows:
                exists = conn.execute(
                    sa.select(opt_outs.c.nhs_number).where(
                        opt_outs.c.nhs_number == nhs, opt_outs.c.kind == kind
                    )
                ).first()
                if exists is None:
                    conn.execute(
                        opt_outs.insert().values(nhs_number=nhs, kind=kind, recorded=recorded)
                    )
                    added += 1
        return added

    def all(self) -> dict[str, set[str]]:
        """NHS number -> the kinds of opt-out recorded."""
        out: dict[str, set[str]] = {}
        with self.db.engine.connect() as conn:
            for nhs, kind in conn.execute(sa.select(opt_outs.c.nhs_number, opt_outs.c.kind)):
                out.setdefault(str(nhs), set()).add(str(kind))
        return out
