"""PostgreSQL's own CPU for a benchmark's work: its backends' CPU time, read from /proc.

    backends = Backends(url)        # the database's client backends, other than its own
    before = backends.cpu()
    ... work ...
    reads, others = backends.cpu() - before   # (this process's connections, the rest)

Each backend's time on a CPU comes from ``/proc/<pid>/schedstat``, in nanoseconds
(PostgreSQL on this machine; ``pg_stat_statements`` is not loaded there; ``stat``'s
ticks of 10 ms, summed over eight backends, were too coarse for a thousand searches).
A backend is this process's when its client port is the local port of one of this
process's sockets, so the reads of the gateway made in the benchmark's process are
told from its audit writer child's appends. A backend that ended meanwhile is not
counted (a benchmark keeps its connections open); one that started counts from zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class Split:
    """CPU seconds of the backends serving this process, and of the others."""

    own: float
    others: float

    def __sub__(self, before: Split) -> Split:
        return Split(self.own - before.own, self.others - before.others)


class Backends:
    """The client backends of one PostgreSQL database (on this machine)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.conn.autocommit = True

    def cpu(self) -> Split:
        """CPU seconds used so far by the database's backends, this process's and others'."""
        rows = self.conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
        mine = own_ports()
        own = others = 0.0
        for pid, port in rows:
            try:  # nanoseconds on a CPU (/proc/<pid>/stat counts in ticks of 10 ms)
                used = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
            except OSError:
                continue  # ended meanwhile
            if port in mine:
                own += used
            else:
                others += used
        return Split(own, others)

    def close(self) -> None:
        self.conn.close()


def own_ports() -> set[int]:
    """The local TCP ports of this process's sockets."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
