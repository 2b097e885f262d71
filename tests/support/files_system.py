"""A gateway over simulators that serve FHIR files (``carelink simulate NAME --data PATH``):
outside data such as the Synthea export or a broken feed, through the real processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import built_and_served, free_port, running


@dataclass(frozen=True)
class FilesSystem:
    """Where the gateway listens, what ``index build`` said, and the environment used."""

    base: str
    built: subprocess.CompletedProcess[str]
    env: dict[str, str]
    sources: dict[str, str]
    logs: dict[str, Path]  # each simulator's output (its --data report), source -> file


@contextmanager
def files_system(
    data: Mapping[str, Path], tmp: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[FilesSystem]:
    """One simulator per ``data`` entry (source name -> file or folder), the index built over
    them in ``tmp``, and a gateway in development auth, until the block ends."""
    with ExitStack() as stack:
        urls, logs = {}, {}
        for name, path in data.items():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            logs[name] = tmp / f"{name}.log"
            stack.enter_context(
                running(
                    ["simulate", name, "--port", str(port), "--data", str(path)],
                    f"{url}/_admin/health",
                    output=logs[name],
                )
            )
            urls[name] = url
        base, env, built = built_and_served(stack, urls, tmp / "index.db", extra_env)
        yield FilesSystem(base, built, env, urls, logs)
