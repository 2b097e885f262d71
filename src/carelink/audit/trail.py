"""The tamper-evident trail: append, sign checkpoints, verify.

Rows are chained by hash (``storage.audit_store``). A checkpoint is the head
(sequence number and hash) signed with the gateway's Ed25519 key; kept
somewhere else, it lets ``verify`` prove the trail was not truncated or
rewritten back to that point.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from carelink.errors import AuditError, ConfigError
from carelink.secret_files import create_secret
from carelink.storage.audit_store import GENESIS, AuditStore, NewEvent, chain_hash

Json = dict[str, Any]


def load_or_make_key(directory: Path) -> Ed25519PrivateKey:
    """The checkpoint signing key (made on first use, file mode 0600)."""
    path = directory / "audit-ed25519.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    create_secret(path, pem)
    return key


def _public_raw(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class AuditTrail:
    """Writes events durably; any failure is an ``AuditError`` (the request fails closed)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def record(self, events: Sequence[tuple[str, str | None, str, Json]]) -> int:
        """Append (recorded, patient id, outcome, AuditEvent) tuples; the last seq."""
        try:
            return self.store.append([NewEvent(r, p, o, orjson.dumps(e)) for r, p, o, e in events])
        except Exception as exc:  # any storage failure means: do not answer
            raise AuditError("audit trail unavailable") from exc

    def checkpoint(self, key: Ed25519PrivateKey) -> Json:
        """The signed head, to be kept elsewhere."""
        seq, head = self.store.head()
        message = f"{seq}|{head}".encode()
        return {
            "seq": seq,
            "hash": head,
            "signature": base64.b64encode(key.sign(message)).decode(),
            "public_key": _public_raw(key.public_key()),
        }


Pending = tuple[str, str | None, str, Json]


class GroupCommit:
    """Batches the events of concurrent requests into one transaction (group commit).

    Each request awaits the commit that contains its events, so every event
    is durable (synced to disk) before its answer goes out. The commit runs
    on one dedicated writer thread: while it waits for the disk, the event
    loop goes on serving, and the events of every request that finishes
    meanwhile form the next batch.
    """

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self._pending: list[Pending] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        self.commits = 0

    async def record(self, events: Sequence[Pending]) -> None:
        """Return once ``events`` are committed; ``AuditError`` if they could not be."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.extend(events)
        self._waiters.append(waiter)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                try:
                    await loop.run_in_executor(self._writer, self.trail.record, batch)
                except AuditError as exc:
                    for w in waiters:
                        w.set_exception(exc)
                else:
                    self.commits += 1
                    for w in waiters:
                        w.set_result(None)
        finally:
            self._flushing = None

    def close(self) -> None:
        """Close the store's connection on the thread that made it, then stop that thread."""
        self._writer.submit(self.trail.store.close).result()
        self._writer.shutdown(wait=True)


@dataclass(frozen=True)
class Finding:
    """Where verification failed, and how."""

    seq: int
    problem: str


def verify(
    store: AuditStore, checkpoint: Json | None = None, trusted_key: Ed25519PublicKey | None = None
) -> list[Finding]:
    """Every break in the chain (edited, deleted, inserted, reordered rows) and, with a
    checkpoint, truncation or rewriting before it. Empty when the trail is intact."""
    findings: list[Finding] = []
    expected_seq, prev = 1, GENESIS
    seen: dict[int, str] = {}
    for row in store.rows():
        if row.seq != expected_seq:
            findings.append(
                Finding(
                    row.seq, f"expected record {expected_seq}: a record is missing or was inserted"
                )
            )
        if row.prev_hash != prev:
            findings.append(
                Finding(
                    row.seq, "does not follow the record before it (deleted, inserted or reordered)"
                )
            )
        if chain_hash(row.prev_hash, row.seq, row.event) != row.hash:
            findings.append(Finding(row.seq, "content does not match its hash (edited)"))
        seen[row.seq] = row.hash
        expected_seq, prev = row.seq + 1, row.hash
    if checkpoint is not None:
        findings.extend(_check_point(checkpoint, seen, trusted_key))
    return findings


def _check_point(
    cp: Json, seen: dict[int, str], trusted_key: Ed25519PublicKey | None
) -> list[Finding]:
    seq = int(cp["seq"])
    key = trusted_key or Ed25519PublicKey.from_public_bytes(base64.b64decode(cp["public_key"]))
    try:
        key.verify(base64.b64decode(cp["signature"]), f"{seq}|{cp['hash']}".encode())
    except InvalidSignature:
        return [Finding(seq, "checkpoint signature is not valid")]
    if seq not in seen:
        return [Finding(seq, "trail ends before this checkpoint (truncated)")]
    if seen[seq] != cp["hash"]:
        return [Finding(seq, "record differs from the checkpoint (rewritten)")]
    return []
