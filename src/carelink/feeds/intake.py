"""One pushed HL7 v2 message: read it, decide its acknowledgement, say what to store.

Acknowledgement codes are HL7 table 0008 in original acknowledgement mode
(v2.5.1 chapter 2.9): **AA** the message was accepted (and, here, stored);
**AR** it was rejected without being looked at as content, because it cannot
be read as HL7 v2, or its type, event or version is one this receiver does
not take; **AE** it was read but its content is wrong (a required field is
missing or unreadable). An ``ERR`` segment carries the table 0357 code.
Neither AR nor AE is worth resending unchanged: a message that could not be
*stored* gets no acknowledgement at all, so the sender sends it again.

Separators, the escape character and so the escapes are the message's own
(MSH-1, MSH-2); the acknowledgement is written with the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hl7

from carelink.sources.base import holdable_key
from carelink.sources.hl7v2 import (
    UNREADABLE,
    control_id,
    field,
    message_type,
    person,
    person_id,
    prior_id,
    value,
)
from carelink.sources.namespacing import namespaced_id
from carelink.storage import LOCAL_ID_LENGTH, Arrival
from carelink.storage.feed_tables import CONTROL_ID_LENGTH

#: ADT events and results the community feed carries (and PPR^PC1 problems, which the
#: trust sends on the same interface)
ACCEPTED = frozenset(
    {
        "ADT^A01",  # admit / start of an episode of care
        "ADT^A02",  # transfer
        "ADT^A03",  # discharge / end of a contact
        "ADT^A04",  # register
        "ADT^A08",  # update patient information
        "ADT^A28",  # add person information
        "ADT^A29",  # delete person information
        "ADT^A31",  # update person information
        "ADT^A40",  # merge patient: patient identifier list (MRG)
        "ORU^R01",  # observation results
        "PPR^PC1",  # problem added
    }
)
MERGE = "ADT^A40"
#: the receiving side's names in the acknowledgement's MSH-3 and MSH-4
RECEIVER = ("CARELINK", "ICS")

# HL7 table 0357 (message error condition codes)
REQUIRED_FIELD_MISSING = ("101", "Required field missing")
DATA_TYPE_ERROR = ("102", "Data type error")
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNSUPPORTED_EVENT = ("201", "Unsupported event code")
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")


@dataclass(frozen=True)
class Verdict:
    """What to answer, and what to store before answering (only when accepted)."""

    code: str  # AA | AE | AR
    ack: bytes  # the acknowledgement message, without MLLP framing
    arrival: Arrival | None = None
    reason: str = ""  # why not accepted (names a field, never the data)


def read(block: bytes, source: str, received_at: str, ack_id: str) -> Verdict:
    """The verdict on one MLLP block from ``source``."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return bare_ack("AR", ack_id, DATA_TYPE_ERROR, "message is not UTF-8")
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH") or len(text) < 8:
        return bare_ack("AR", ack_id, SEGMENT_SEQUENCE_ERROR, "message does not start with MSH")
    try:
        msg = hl7.parse(text)
        kind = message_type(msg)
        sender_id = control_id(msg)
        version = value(msg, msg.segment("MSH"), 12)
    except Exception:  # python-hl7 raises several kinds on broken input
        return bare_ack("AR", ack_id, SEGMENT_SEQUENCE_ERROR, "MSH cannot be read")
    if not sender_id:
        return _ack(msg, "AR", ack_id, REQUIRED_FIELD_MISSING, "no message control id (MSH-10)")
    if len(sender_id) > CONTROL_ID_LENGTH:
        why = f"message control id (MSH-10) longer than {CONTROL_ID_LENGTH} characters"
        return _ack(msg, "AR", ack_id, DATA_TYPE_ERROR, why)
    if not version.startswith("2."):
        return _ack(msg, "AR", ack_id, UNSUPPORTED_VERSION, "only HL7 version 2.x (MSH-12)")
    if kind not in ACCEPTED:
        known_type = any(k.startswith(kind.split("^")[0] + "^") for k in ACCEPTED)
        error = UNSUPPORTED_EVENT if known_type else UNSUPPORTED_MESSAGE_TYPE
        return _ack(msg, "AR", ack_id, error, f"{kind or 'no type'} is not taken (MSH-9)")
    try:
        arrival = _arrival(msg, kind, source, sender_id, received_at, text)
    except _TooLong as exc:
        return _ack(msg, "AE", ack_id, DATA_TYPE_ERROR, exc.reason)
    except UNREADABLE as exc:
        why = getattr(exc, "reason", None) or f"unreadable content ({type(exc).__name__})"
        return _ack(msg, "AE", ack_id, REQUIRED_FIELD_MISSING, why)
    return _ack(msg, "AA", ack_id, None, "", arrival)


class _Missing(ValueError):
    """A required field of the content is empty."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooLong(ValueError):
    """A record key longer than the index holds (it would be refused, or cut short)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _held(source: str, local: str, where: str) -> None:
    """Refuse a record key the index could not hold (the build's and the update's rule)."""
    if not holdable_key(source, local):
        raise _TooLong(f"{where} is longer than {LOCAL_ID_LENGTH} characters or holds a NUL")


def _arrival(
    msg: Any, kind: str, source: str, sender_id: str, received_at: str, text: str
) -> Arrival:
    """The plain values to store; raises when the content cannot be used."""
    local = person_id(msg)
    if not local:
        raise _Missing("no local (MR) identifier in PID-3")
    _held(source, local, "the local (MR) identifier in PID-3")
    full_pid = bool(field(msg, msg.segment("PID"), 5)[0][0])
    if full_pid:
        person(msg, source)  # the Patient must be readable, or the message is no use
    merged_from = None
    if kind == MERGE:
        merged_from = prior_id(msg)
        if not merged_from:
            raise _Missing("no prior local (MR) identifier in MRG-1")
        _held(source, merged_from, "the prior local (MR) identifier in MRG-1")
    return Arrival(
        source=source,
        control_id=sender_id,
        kind=kind,
        local_id=local,
        received_at=received_at,
        body=text,
        demographics=full_pid and kind.startswith("ADT^"),
        merged_from=merged_from,
        surviving_patient_id=namespaced_id(source, local) if merged_from else None,
    )


def _ack(
    msg: Any,
    code: str,
    ack_id: str,
    error: tuple[str, str] | None,
    reason: str,
    arrival: Arrival | None = None,
) -> Verdict:
    """An acknowledgement of ``msg`` in its own encoding characters."""
    ack = msg.create_ack(code, message_id=ack_id, application=RECEIVER[0], facility=RECEIVER[1])
    text = str(ack).rstrip("\r")
    if error is not None:
        fs, cs = msg.separators[1], msg.separators[3]
        text += f"{fs}{msg.escape(reason)}\r" + _err(fs, cs, error, msg.escape(reason))
    return Verdict(code, text.encode("utf-8") + b"\r", arrival, reason)


def _err(fs: str, cs: str, error: tuple[str, str], text: str) -> str:
    """ERR-3 (the table 0357 code), ERR-4 severity E, ERR-8 the user message."""
    code, display = error
    return f"ERR{fs}{fs}{fs}{code}{cs}{display}{cs}HL70357{fs}E{fs}{fs}{fs}{fs}{text}"


def bare_ack(code: str, ack_id: str, error: tuple[str, str], reason: str) -> Verdict:
    """An acknowledgement of a message whose MSH cannot be read: default encoding
    characters, no MSA-2 (there is no control id to echo)."""
    msh = f"MSH|^~\\&|{RECEIVER[0]}|{RECEIVER[1]}|||||ACK|{ack_id}|P|2.5.1"
    text = f"{msh}\rMSA|{code}||{reason}\r{_err('|', '^', error, reason)}\r"
    return Verdict(code, text.encode("utf-8"), None, reason)
