"""Verification of the trail: the chain, every stored column, and a signed checkpoint."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carelink.audit.checkpoints import message
from carelink.audit.events import columns, legacy_agent
from carelink.storage.audit_store import GENESIS, IDENTIFIED, AuditRow, AuditStore

Json = dict[str, Any]
_NAMES = ("recorded", "patient_id", "outcome", "agent")


@dataclass(frozen=True)
class Finding:
    """Where verification failed, and how."""

    seq: int
    problem: str


#: what each hash scheme covers, as a rank: chain 1 the event only, chain 2 every column,
#: chain 3 every column with the issuer in ``agent``; chain 4 covers what chain 3 does (its
#: hash arranged so the server can link it), so a chain-3 row after chain-4 rows (a
#: gateway of the release before beside a newer one, during an upgrade) is no step back
_COVERS = {1: 1, 2: 2, 3: 3, 4: 3}


def _row_findings(row: AuditRow, expected_seq: int, prev: str, newest: int) -> list[Finding]:
    out = []
    if row.seq != expected_seq:
        out.append(
            Finding(row.seq, f"expected record {expected_seq}: a record is missing or was inserted")
        )
    if row.prev_hash != prev:
        out.append(
            Finding(
                row.seq, "does not follow the record before it (deleted, inserted or reordered)"
            )
        )
    if _COVERS.get(row.chain, newest) < newest:
        out.append(Finding(row.seq, "old hash scheme after newer records (downgraded)"))
    expected = row.expected_hash()
    if expected is None:
        out.append(Finding(row.seq, f"unknown hash scheme {row.chain}"))
    elif expected != row.hash:
        out.append(Finding(row.seq, "content does not match its hash (edited)"))
    try:
        event = orjson.loads(row.event)
        told = columns(event)
        if row.chain < IDENTIFIED:  # stored with the bare subject: held to that
            told = (*told[:3], legacy_agent(event))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return [*out, Finding(row.seq, "content is not an AuditEvent (edited)")]
    stored = (row.recorded, row.patient_id, row.outcome, row.agent)
    for name, kept, said in zip(_NAMES, stored, told, strict=True):
        if name == "agent" and row.chain == 1 and kept is None:
            continue  # rows from before migration 9 were stored without it
        if kept != said:
            out.append(Finding(row.seq, f"{name} differs from its event (edited)"))
    return out


def verify(
    rows: Iterable[AuditRow],
    checkpoint: Json | None = None,
    trusted_key: Ed25519PublicKey | None = None,
) -> list[Finding]:
    """Every break in the chain (edited, moved, deleted, inserted or reordered rows) and,
    with a checkpoint and the key it must be signed with, truncation or rewriting before
    it. Empty when the trail is intact. Streams: memory does not grow with the trail."""
    if checkpoint is not None and trusted_key is None:
        raise ValueError("a checkpoint is only checked against a trusted key")
    findings: list[Finding] = []
    # the most a scheme seen covers: a row whose scheme covers less after it is a downgrade
    expected_seq, prev, newest = 1, GENESIS, 0
    cp_seq = int(checkpoint["seq"]) if checkpoint is not None else None
    at_checkpoint: str | None = None
    for row in rows:
        findings.extend(_row_findings(row, expected_seq, prev, newest))
        # an unknown scheme is reported as such, and raises nothing
        newest = max(newest, _COVERS.get(row.chain, 0))
        if row.seq == cp_seq:
            at_checkpoint = row.hash
        expected_seq, prev = row.seq + 1, row.hash
    if checkpoint is not None and trusted_key is not None:
        findings.extend(_check_point(checkpoint, at_checkpoint, expected_seq - 1, trusted_key))
    return findings


def verify_index(store: AuditStore) -> list[Finding]:
    """Where the patient index (derived from the rows, ``storage.audit_blocks``) does not
    match them: an index row naming the wrong patient or event cannot add an answer to a
    search (each row found is held to the patient), but one altered or deleted could
    hide an event from a search by patient, so it is reported like any tampering."""
    return [Finding(seq, problem) for seq, problem in store.index_problems()]


def _check_point(cp: Json, found: str | None, last: int, key: Ed25519PublicKey) -> list[Finding]:
    seq = int(cp["seq"])
    try:
        key.verify(base64.b64decode(cp["signature"]), message(seq, str(cp["hash"])))
    except (InvalidSignature, ValueError):
        return [Finding(seq, "checkpoint signature is not valid (not signed by this key)")]
    if found is None:
        if seq > last:
            ends = f"trail ends at record {last}, before this checkpoint (truncated)"
            return [Finding(seq, ends)]
        return [Finding(seq, "checkpointed record is missing (deleted)")]
    if found != cp["hash"]:
        return [Finding(seq, "record differs from the checkpoint (rewritten)")]
    return []
