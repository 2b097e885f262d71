"""Instructions counted by callgrind: the one runner the instruction benchmarks share.

A benchmark runs itself again as a child under ``valgrind --tool=callgrind`` with
counting off (``counted``); the child turns counting on and off around the work it
measures and may dump the counts so far (``control``). Instructions do not depend on
the machine's load, so two trees can be compared on a shared machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_TOTALS = re.compile(r"^totals: (\d+)", re.M)


def control(*flags: str) -> None:
    """``callgrind_control`` on this process: ``"-i", "on"`` / ``"-i", "off"`` (counting),
    ``"-d"`` (dump the counts so far to a file of their own and start again from zero)."""
    subprocess.run(
        ["callgrind_control", *flags, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


def counted(
    script: Path, args: Sequence[str], env: Mapping[str, str] | None = None, dumps: int = 0
) -> list[int]:
    """Run ``script args`` under callgrind, counting off at the start; the instructions of
    each dump the child made (``control("-d")``), in order, then of the rest (callgrind's
    own totals line in each file). Exits with callgrind's error when the child failed or
    fewer than ``dumps`` dumps were written."""
    out = Path(tempfile.mkdtemp(prefix="carelink-ir-")) / "callgrind.out"
    child = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(script),
        *args,
    ]
    done = subprocess.run(child, env=env, capture_output=True, text=True)
    files = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    found = [_TOTALS.search(p.read_text()) for p in [*files, out] if p.exists()]
    totals = [int(f.group(1)) for f in found if f is not None]
    if done.returncode != 0 or len(totals) < dumps + 1:
        sys.exit(f"callgrind failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return totals
