"""An export job recorded complete keeps its files, however late the record's answer.

The fault (seen once in CI: an export's manifest named a file that answered 404): the
job's watch reads the job's state every ``CHECK_SECONDS``; once the job's outcome was
committed but before the extract had the commit's answer back, the watch saw the job
no longer running, cancelled the extract, and the runner deleted the files of a job the
database had just recorded complete. Here the commit's answer comes back late on
purpose (a job store whose ``finish`` commits, then takes a second to return, as a
loaded machine or a slow round trip does); everything else is the real runner, a real
patient index (a SQLite file) and a real extract.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from carelink.assembly import guard_of
from carelink.consent.policy import load_policy
from carelink.export.jobs import CHECK_SECONDS, JobRequest, Runner
from carelink.export.spec import ExtractSpec
from carelink.settings import Settings
from carelink.storage import ConsentStore, JobStore, OptOutStore
from tests.export.test_reader import Scripted, index, record

__all__ = ["index"]  # the patient index fixture, shared with the reader's tests

LATE = 4 * CHECK_SECONDS


class LateAnswer(JobStore):
    """A job store whose recording of an outcome commits, then answers ``LATE`` seconds
    later."""

    def finish(self, job_id: str, status: str, manifest: bytes, now: float) -> bool:
        done = super().finish(job_id, status, manifest, now)
        time.sleep(LATE)
        return done


def test_a_job_recorded_complete_keeps_its_files_when_the_record_answers_late(index, tmp_path):
    db = index.db
    settings = Settings()
    jobs = LateAnswer(db)
    runner = Runner(
        jobs,
        OptOutStore(db),
        record(index, Scripted("acute")),
        tmp_path / "exports",
        Path(settings.deid_rules),
        b"k" * 32,
        guard_of(load_policy(Path(settings.consent_policy)), ConsentStore(db), settings),
    )
    request = JobRequest(ExtractSpec("p", "pseudonymised", frozenset({"Patient"})), "x", "ndjson")
    jobs.create("j1", "analyst", request.to_bytes(), time.time())
    job = jobs.claim(time.time())
    assert job is not None

    asyncio.run(runner.run_one(job))

    row = jobs.get("j1")
    assert row is not None
    assert row.status == "complete"
    manifest = orjson.loads(row.manifest)
    assert manifest["output"]  # something to ship
    for out in manifest["output"]:
        assert (tmp_path / "exports" / "j1" / out["url"]).is_file(), out
