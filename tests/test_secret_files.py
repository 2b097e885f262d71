"""Key files are made once, owner-only."""

from __future__ import annotations

import stat

import pytest

from carelink.secret_files import create_secret


def test_a_key_file_is_owner_only_and_never_overwritten(tmp_path):
    path = tmp_path / "keys" / "k.bin"
    create_secret(path, b"first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_secret(path, b"second")
    assert path.read_bytes() == b"first"
