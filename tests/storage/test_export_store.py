"""Export jobs held by a lease; opt-outs kept once."""

from __future__ import annotations

from carelink.storage import JobStore, OptOutStore
from carelink.storage.export_store import LEASE_SECONDS


def test_a_job_is_held_by_one_process_until_its_lease_runs_out(db):
    jobs = JobStore(db)
    jobs.create("j1", "client", b"{}", now=100.0)
    first = jobs.claim(now=101.0)
    assert first is not None
    assert first.status == "running"
    assert jobs.claim(now=102.0) is None  # held
    assert jobs.heartbeat("j1", "5 of 10 people", now=110.0)
    assert jobs.claim(now=110.0 + LEASE_SECONDS - 1) is None
    again = jobs.claim(now=110.0 + LEASE_SECONDS + 1)  # its process died: taken again
    assert again is not None
    assert again.id == "j1"
    assert jobs.finish("j1", "complete", b'{"output": []}', now=150.0)
    assert jobs.claim(now=10_000.0) is None


def test_a_cancelled_job_stops_and_is_never_finished(db):
    jobs = JobStore(db)
    jobs.create("j2", "client", b"{}", now=1.0)
    assert jobs.claim(now=2.0) is not None
    assert jobs.cancel("j2")
    assert not jobs.heartbeat("j2", "x", now=3.0)  # the runner learns it should stop
    assert not jobs.finish("j2", "complete", b"{}", now=4.0)
    row = jobs.get("j2")
    assert row is not None
    assert row.status == "cancelled"


def test_opt_outs_are_kept_once_per_kind(db):
    store = OptOutStore(db)
    assert store.load([("9434765919", "ndop"), ("9434765919", "ndop")], "t") == 1
    assert store.load([("9434765919", "type1")], "t") == 1
    assert store.all() == {"9434765919": {"ndop", "type1"}}


def test_finished_jobs_expire_after_their_time_and_running_ones_do_not(db):
    jobs = JobStore(db)
    for job_id, created in (("old-done", 10.0), ("old-running", 11.0), ("new-done", 500.0)):
        jobs.create(job_id, "client", b"{}", now=created)
    assert [jobs.claim(now=600.0).id for _ in range(3)] == ["old-done", "old-running", "new-done"]
    assert jobs.finish("old-done", "complete", b'{"output": []}', now=50.0)
    assert jobs.finish("new-done", "complete", b'{"output": []}', now=600.0)
    assert jobs.expire(kept_before=100.0) == ["old-done"]
    expired = jobs.get("old-done")
    assert expired is not None
    assert (expired.status, expired.manifest) == ("expired", None)
    assert jobs.get("old-running").status == "running"
    assert jobs.get("new-done").status == "complete"
    assert jobs.expire(kept_before=100.0) == []  # once
    assert not jobs.cancel("old-done")


def test_files_are_kept_from_when_a_job_finished_not_when_it_was_asked_for(db):
    # an extract that ran longer than the retention time was expired as it finished
    jobs = JobStore(db)
    for job_id in ("slow", "quick", "dropped"):
        jobs.create(job_id, "client", b"{}", now=10.0)
    for _ in range(3):
        assert jobs.claim(now=11.0) is not None
    assert jobs.finish("slow", "complete", b'{"output": []}', now=5_000.0)
    assert jobs.finish("quick", "error", b"{}", now=12.0)
    assert jobs.cancel("dropped")
    slow, quick, dropped = (jobs.get(j) for j in ("slow", "quick", "dropped"))
    assert slow is not None
    assert quick is not None
    assert dropped is not None
    assert (slow.kept_from, quick.kept_from, dropped.kept_from) == (5_000.0, 12.0, 10.0)
    # a retention time of 1,000 s at 5,100: the slow one is kept, the others go
    assert sorted(jobs.expire(kept_before=5_100.0 - 1_000.0)) == ["dropped", "quick"]
    assert jobs.get("slow").status == "complete"
    assert jobs.expire(kept_before=6_001.0) == ["slow"]
