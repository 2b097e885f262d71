"""Start carelink's own processes (simulators, gateway) for integration tests.

Each runs as a real process on a free loopback port, as in production, so
networking, timeouts and failures in the tests are real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_files(folder: Path) -> dict[str, str]:
    """The settings that put every file a gateway writes (its token issuer's and audit
    keys, audit checkpoints, the extract master key, exports) in ``folder``, not beside
    its database or in ``var/`` of the working directory."""
    return {
        "CARELINK_ISSUER_KEYS": str(folder / "issuer"),
        "CARELINK_AUDIT_KEYS": str(folder / "audit"),
        "CARELINK_AUDIT_CHECKPOINTS": str(folder / "checkpoints"),
        "CARELINK_MASTER_KEY": str(folder / "master.key"),
        "CARELINK_EXPORTS": str(folder / "exports"),
    }


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: this interpreter's, with ``src`` importable."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(SRC) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra or {})
    return out


def _output_of(proc: subprocess.Popen[bytes], log: IO[bytes] | None) -> str:
    if proc.stdout:
        return proc.stdout.read().decode(errors="replace")
    if log is not None and log.readable():
        log.seek(0)
        return log.read().decode(errors="replace")
    return ""


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0, log: IO[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers; fail with the child's output (its pipe, or ``log``
    when that is where it writes) if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = _output_of(proc, log)
            raise RuntimeError(f"process for {url} exited ({proc.returncode}):\n{out[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@contextmanager
def running(
    args: list[str],
    ready_url: str,
    extra_env: Mapping[str, str] | None = None,
    output: Path | None = None,
    pipe: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m carelink ARGS`` until the block ends.

    The child's stdout and stderr go to ``output`` (a file a test may read while the
    child runs), to a pipe the test reads (``pipe``), or else to an anonymous
    temporary file: a gateway writes a log line per request, and an unread pipe
    would fill up and stop it.
    """
    log: IO[bytes] | None = None
    if output is not None:
        log = output.open("wb")
    elif not pipe:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "carelink", *args],
        env=env(extra_env),
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(ready_url, proc, log=log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if log is not None:
            log.close()


def carelink(
    args: list[str], extra_env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run one ``carelink`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "carelink", *args],
        env=env(extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def built_and_served(
    stack: ExitStack,
    sources: Mapping[str, str],
    db: Path,
    extra_env: Mapping[str, str] | None = None,
    serve: bool = True,
) -> tuple[str, dict[str, str], subprocess.CompletedProcess[str]]:
    """``carelink index build`` over ``sources`` (name -> URL) into the SQLite file ``db``,
    then (``serve``) a gateway in development auth serving it until ``stack`` closes: its
    FHIR base ("" without a gateway), the environment both ran with, and what the build
    said."""
    env = {
        "CARELINK_DATABASE_URL": str(db),
        "CARELINK_SOURCES": ",".join(f"{k}={v}" for k, v in sources.items()),
        "CARELINK_AUTH": "development",
        **(extra_env or {}),
    }
    built = carelink(["index", "build"], env)
    assert built.returncode == 0, built.stderr
    if not serve:
        return "", env, built
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    stack.enter_context(running(["serve", "--port", str(port)], f"{base}/metadata", env))
    return base, env, built


def workers_of(parent: int) -> set[int]:
    """A ``carelink serve`` parent's worker processes (its children that serve; Linux)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    out = set()
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            out.add(int(pid))
    return out
