"""Key files: written once, readable by the owner only."""

from __future__ import annotations

import os
from pathlib import Path


def create_secret(path: Path, data: bytes) -> None:
    """Write a new key file with mode 0600 (its folder made if need be); ``FileExistsError``
    if one is already there, so two processes never overwrite each other's key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
