"""A gateway worker loads the extract's stack (pandas, pyarrow, numpy, the anonymiser)
only when it runs an extract: loading it at start cost each worker ~0.55 s of CPU and
~90 MB of memory (measured at stop 34: 2.03 s / 196 MB against 1.48 s / 103 MB for
``import carelink.app``), and a SIGHUP restart or a replaced worker paid it again."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pandas", "pyarrow", "numpy", "carelink.export.pipeline", "carelink.anonymise.engine")


def _loaded_after(statement: str) -> list[str]:
    probe = (
        f"import sys\n{statement}\n"
        f"print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_starting_a_gateway_worker_loads_none_of_the_extract_stack():
    # what ``carelink serve`` and each of its workers import before serving
    assert _loaded_after("import carelink.app, carelink.start") == []


def test_the_extract_stack_is_there_when_an_extract_needs_it():
    # the probe can see the modules it looks for (else the test above could never fail)
    loaded = _loaded_after("import carelink.export.pipeline, carelink.export.tables")
    assert {"pandas", "carelink.export.pipeline", "carelink.anonymise.engine"} <= set(loaded)
