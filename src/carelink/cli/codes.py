"""The ``carelink`` command's exit codes (each means one thing, never reused; listed in
the package's docstring), its usage error, and the one line a failed command ends with."""

from __future__ import annotations

import logging
import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_SOURCE, EXIT_TAMPERED = 0, 1, 2, 3, 4, 5


class UsageError(Exception):
    """An argument that parses but names something that does not exist (exit 2)."""


def fail(text: str) -> None:
    """The one line a failed command ends with, after every log line before it (the
    gateway writes its log lines in batches: ``observability.logs.BufferedLines``)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(f"carelink: {text}", file=sys.stderr)
