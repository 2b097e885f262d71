"""What PostgreSQL's backends are doing while the gateway is under load (issue 15).

    PYTHONPATH=src .venv/bin/python benchmarks/pg_waits.py \
        --database postgresql://postgres@127.0.0.1:5432/NAME [--samples 150] [--every 0.05]

Run it beside a load (``index_bench.py --database … --measure-only``, or wrk against
``carelink serve``): it reads ``pg_stat_activity`` ``--samples`` times, ``--every``
seconds apart, and counts each active backend of that database by what it waits for
and the statement it runs or ran last (``wait type:wait event:statement``, "cpu"
when it waits for nothing). The counts say where an append's lock is held and
waited for: ``Lock:transactionid`` on the append lock's ``SELECT … FOR UPDATE`` is an
appender waiting for another; ``Client:ClientRead`` after the head's ``SELECT`` is
the backend holding the lock while the writer child makes its rows; ``IO:WALSync``
on ``COMMIT`` is the flush. Only statements' first words are shown (never values:
the statements are prepared, their parameters are not in the text).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import psycopg

_ACTIVE = (
    "SELECT coalesce(wait_event_type, 'cpu'), coalesce(wait_event, '-'),"
    " left(regexp_replace(query, '\\s+', ' ', 'g'), %s)"
    " FROM pg_stat_activity"
    " WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
)


def sample(url: str, samples: int, every: float, width: int) -> Counter[str]:
    """How many times each (wait, statement) was seen among the active backends."""
    seen: Counter[str] = Counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(samples):
            for kind, event, statement in conn.execute(_ACTIVE, (width,)):
                seen[f"{kind}:{event}:{statement}"] += 1
            time.sleep(every)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", required=True, help="the gateway's PostgreSQL URL")
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--every", type=float, default=0.05, help="seconds between samples")
    ap.add_argument("--width", type=int, default=25, help="characters of each statement")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    seen = sample(args.database, args.samples, args.every, args.width)
    print(f"{sum(seen.values())} active backends seen in {args.samples} samples")
    for what, n in seen.most_common(args.top):
        print(f"{n:6d}  {what}")


if __name__ == "__main__":
    main()
