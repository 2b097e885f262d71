"""What watching a running export costs: the read a job's holder makes every
``CHECK_SECONDS`` to see a cancel taken by another process (``JobStore.holder``).

Run with ``.venv/bin/python benchmarks/job_watch.py [DATABASE_URL]`` (default: a
SQLite file in a temporary folder); prints CPU and wall time per read.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from carelink.export.jobs import CHECK_SECONDS
from carelink.storage import Database, JobStore

READS = 2000


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else str(Path(tempfile.mkdtemp()) / "jobs.db")
    db = Database(url)
    db.migrate()
    jobs = JobStore(db)
    for i in range(1000):  # a table with history in it
        jobs.create(f"bench-{i}-{time.time_ns()}", "bench", b"{}", time.time())
    job = jobs.claim(time.time())
    assert job is not None
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(READS):
        jobs.holder(job.id)
    cpu_us = (time.process_time() - cpu) / READS * 1e6
    wall_us = (time.perf_counter() - wall) / READS * 1e6
    share = cpu_us / 1e6 / CHECK_SECONDS * 100
    print(f"{cpu_us:.0f} us CPU, {wall_us:.0f} us wall per read; {share:.3f}% of a core per job")
    db.dispose()


if __name__ == "__main__":
    main()
