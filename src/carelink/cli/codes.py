"""The ``carelink`` command's exit codes (each means one thing, never reused; listed in
the package's docstring) and its usage error."""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_SOURCE, EXIT_TAMPERED = 0, 1, 2, 3, 4, 5


class UsageError(Exception):
    """An argument that parses but names something that does not exist (exit 2)."""
