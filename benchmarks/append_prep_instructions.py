"""The audit writer child's own work on PostgreSQL before the database, a search's events.

    PYTHONPATH=src .venv/bin/python benchmarks/append_prep_instructions.py \
        [--batches 40] [--searches 6] [--people 13] [--cpu]

On PostgreSQL the child does four things of its own a batch besides waiting for the
server: it reads the gateway's frame (``frame_rows``), makes each event's stored bytes and
digests (``_unchained``), encodes the insert's parameters (``_chained_params``) and, once
the server has answered, checks the links it made (``_check_links``). This counts their
instructions under callgrind (the same for any load; ``benchmarks/callgrind.py``), for
batches shaped as the year range's at load: ``--searches`` requests of ``--people``
events each, one user, the request path's own rows (``audit.events.request_rows``).
``--cpu`` times the same work in process instead (``time.process_time``, best of five).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.callgrind import control, counted

SERVER = "https://carelink.example.nhs.uk/fhir"


def batches(n: int, searches: int, people: int) -> list[bytes]:
    """``n`` frames as the gateway sends them, each ``searches`` year-range searches."""
    from carelink.audit.events import SUCCESS, Who, frame, request_rows
    from carelink.audit.writer import rows_frame

    caller = Who("clinician-1", "R8000", "RXY01", "TREAT", "https://issuer.example", "app-1")
    kind = frame(caller, SERVER, "search-type", SUCCESS, None)
    out = []
    for b in range(n):
        rows = []
        for s in range(searches):
            rows += request_rows(
                kind,
                f"2026-12-03T16:{b % 60:02d}:{s:02d}.123456+00:00",
                f"/fhir/Patient?family=smi&birthdate=ge1960-01-01&birthdate=le1960-12-31&_s={s}",
                str(uuid.UUID(int=b * 100 + s)),
                SUCCESS,
                [str(uuid.UUID(int=10_000_000 + b * 1000 + s * 50 + p)) for p in range(people)],
                lambda: str(uuid.uuid4()),
            )
        out.append(rows_frame(rows))
    return out


def work(frame: bytes) -> None:
    """The child's own work on one frame (PostgreSQL), the server's part made here."""
    from carelink.audit.writer import frame_rows
    from carelink.storage.audit_store import _chained_params, _check_links, _unchained, link

    made = _unchained(frame_rows(frame))
    _chained_params(made, "utf-8")
    h = before = "0" * 64
    for at, row in enumerate(made[0], start=1):
        h = link(h, at, row[6])
    _check_links(made[0], before, len(made[0]), h)


def under(args: argparse.Namespace) -> None:
    frames = batches(args.batches + 2, args.searches, args.people)
    for f in frames[:2]:
        work(f)
    control("-i", "on")
    for f in frames[2:]:
        work(f)
    control("-i", "off")


def cpu(args: argparse.Namespace) -> None:
    frames = batches(args.batches, args.searches, args.people)
    events = args.batches * args.searches * args.people
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(20):
            for f in frames:
                work(f)
        best = min(best, (time.process_time() - start) / 20)
    print(f"{best / events * 1e6:.2f} us an event (best of 5, {events} events a round)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--searches", type=int, default=6)
    parser.add_argument("--people", type=int, default=13)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--under", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.under:
        under(args)
        return
    if args.cpu:
        cpu(args)
        return
    flags = [
        "--under",
        *(f"--{k}={v}" for k in ("batches", "searches", "people") for v in [vars(args)[k]]),
    ]
    (total,) = counted(Path(__file__), flags)
    events = args.batches * args.searches * args.people
    print(f"{total:,} instructions, {total / events:,.0f} an event ({events} events)")


if __name__ == "__main__":
    main()
