"""Signed checkpoints of the trail's head, written to files outside the database.

A checkpoint is the head (sequence number and hash) signed with the
gateway's Ed25519 key. Because each row's hash covers every row before it,
one checkpoint vouches for the whole trail up to its record: ``verify``
against the latest checkpoint finds a trail rewritten or cut off before it.

The gateway writes them itself (``Checkpointer``): after every ``every``
events it appended, and every ``interval`` seconds while the trail grows,
into one folder (``CARELINK_AUDIT_CHECKPOINTS``), one file per head,
``checkpoint-<seq>.json``, written whole and renamed into place. What a
truncation can remove unseen is at most the events since the latest one.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from carelink.errors import ConfigError
from carelink.secret_files import create_secret

Json = dict[str, Any]
KEY_FILE = "audit-ed25519.pem"
PREFIX = "checkpoint-"


def load_key(directory: Path) -> Ed25519PrivateKey:
    """The checkpoint signing key; ``ConfigError`` when there is none (never made here:
    a verifier that made itself a key would trust nothing it should)."""
    path = directory / KEY_FILE
    try:
        data = path.read_bytes()
    except OSError:
        raise ConfigError(
            f"no audit checkpoint key at {path} (--keys / CARELINK_AUDIT_KEYS)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise ConfigError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def load_or_make_key(directory: Path) -> Ed25519PrivateKey:
    """The gateway's signing key, made on first use (file mode 0600)."""
    if not (directory / KEY_FILE).exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            create_secret(directory / KEY_FILE, pem)
    return load_key(directory)


def public_raw(key: Ed25519PublicKey) -> str:
    """The raw public key, base64 (shown in a checkpoint; never trusted from there)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def message(seq: int, head: str) -> bytes:
    """What a checkpoint signs."""
    return f"{seq}|{head}".encode()


def sign(key: Ed25519PrivateKey, seq: int, head: str) -> Json:
    """A checkpoint of the head ``seq``/``head``."""
    return {
        "seq": seq,
        "hash": head,
        "signature": base64.b64encode(key.sign(message(seq, head))).decode(),
        "public_key": public_raw(key.public_key()),
    }


def write(directory: Path, checkpoint: Json) -> Path:
    """Write a checkpoint file whole (temporary file, fsync, rename): never half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PREFIX}{int(checkpoint['seq']):012d}.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def latest(directory: Path) -> Path | None:
    """The checkpoint file with the highest record number in ``directory``, if any."""
    if not directory.is_dir():
        return None
    files = sorted(directory.glob(f"{PREFIX}*.json"))
    return files[-1] if files else None


def read(path: Path) -> Json:
    """One checkpoint file; ``ConfigError`` naming it when it cannot be read."""
    try:
        cp: Json = orjson.loads(path.read_bytes())
        int(cp["seq"]), str(cp["hash"]), str(cp["signature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable audit checkpoint ({exc})") from None
    return cp


class Checkpointer:
    """Decides when the gateway writes a checkpoint, and writes it.

    ``clock`` (seconds, monotonic or wall) is a parameter so tests need no sleeping.
    """

    def __init__(
        self,
        directory: Path,
        key: Ed25519PrivateKey,
        every: int,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self.key = key
        self.every = every
        self.interval = interval
        self.clock = clock
        newest = latest(directory)
        self.last_seq = int(read(newest)["seq"]) if newest else 0
        self.last_time = clock()
        self.written = 0

    def _write(self, seq: int, head: str) -> None:
        write(self.directory, sign(self.key, seq, head))
        self.last_seq, self.last_time = seq, self.clock()
        self.written += 1

    def after_append(self, seq: int, head: str) -> bool:
        """Called with the new head after each commit; True when it wrote a checkpoint."""
        due = seq - self.last_seq >= self.every or (
            seq > self.last_seq and self.clock() - self.last_time >= self.interval
        )
        if due:
            self._write(seq, head)
        return due

    def tick(self, head: tuple[int, str]) -> bool:
        """Called now and then with the current head: a checkpoint when one is overdue."""
        seq, hash_ = head
        if seq > self.last_seq and self.clock() - self.last_time >= self.interval:
            self._write(seq, hash_)
            return True
        return False
