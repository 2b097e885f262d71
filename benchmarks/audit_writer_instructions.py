"""The audit writer child's instructions an event and a batch, counted by callgrind.

    PYTHONPATH=src .venv/bin/python benchmarks/audit_writer_instructions.py \
        --trail /tmp/me/trail.db [--batches 200] [--batch 40]

The trail is one kept by ``audit_writer.py`` (copied to a scratch file first). The
writer child's own loop (``audit.writer.serve``) runs on a thread of a process under
callgrind and is sent, over a socket pair as the gateway sends them, ``--batches``
frames of ``--batch`` events each (``rows_frame``, after ``--warm`` not counted):
what is counted is the child's whole work a batch (reading the frame, decoding it,
hashing, the SQLite statements, the answer, the patient index's block when due)
and this side's sending and reading, the same in every tree. Counted with
``--batch 1`` too, the difference gives the cost a commit and the cost an event.
Valgrind runs SHA-256 in software (no CPU extensions), so hashing is overstated.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.audit_writer import _event, remove, scratch_copy
from benchmarks.callgrind import control, counted

_HEAD = struct.Struct(">cI")


def _call(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(_HEAD.pack(kind, len(payload)) + payload)
    head = b""
    while len(head) < _HEAD.size:
        head += sock.recv(_HEAD.size - len(head))
    answer, size = _HEAD.unpack(head)
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    if answer != b"K":
        sys.exit(f"the writer refused a batch: {body!r}")


def under(args: argparse.Namespace) -> None:
    """Under callgrind: the real child loop on a thread, the batches sent to it."""
    import orjson

    from carelink.audit.writer import rows_frame, serve

    rng = random.Random(args.seed)
    n0 = 10_000_000
    frames = [
        rows_frame(
            [
                (e.recorded, e.patient_id, e.outcome, e.agent, e.event)
                for e in (
                    _event(rng, args.people, args.agents, n0 + b * args.batch + i)
                    for i in range(args.batch)
                )
            ]
        )
        for b in range(args.batches + args.warm)
    ]
    ours, theirs = socket.socketpair()
    child = threading.Thread(target=serve, args=(theirs,))
    child.start()
    spec = orjson.dumps({"database_url": args.scratch})
    ours.sendall(_HEAD.pack(b"S", len(spec)) + spec)
    for f in frames[: args.warm]:
        _call(ours, b"R", f)
    control("-i", "on")
    for f in frames[args.warm :]:
        _call(ours, b"R", f)
    control("-i", "off")
    control("-d")
    ours.close()
    child.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trail", type=Path, required=True, help="a trail kept by audit_writer.py")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--warm", type=int, default=10)
    p.add_argument("--people", type=int, default=900_000)
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.scratch:
        under(args)
        return
    scratch = scratch_copy(args.trail, "ir")
    flags = [f"--trail={args.trail}", f"--scratch={scratch}", f"--batches={args.batches}"]
    flags += [f"--batch={args.batch}", f"--warm={args.warm}", f"--people={args.people}"]
    flags += [f"--agents={args.agents}", f"--seed={args.seed}"]
    env = {**os.environ}
    try:
        totals = counted(Path(__file__).resolve(), flags, env, dumps=1)
    finally:
        remove(scratch)
    events = args.batches * args.batch
    print(
        f"batch={args.batch} batches={args.batches}: {totals[0] / events:,.0f} instructions "
        f"an event, {totals[0] / args.batches:,.0f} a batch"
    )


if __name__ == "__main__":
    main()
