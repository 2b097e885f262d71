"""The audit trail: BALP-shaped AuditEvents, hash-chained, with signed checkpoints."""

from carelink.audit.checkpoints import Checkpointer, load_key, load_or_make_key
from carelink.audit.events import Access, RequestEvents, Who, audit_event
from carelink.audit.trail import AuditTrail, GroupCommit
from carelink.audit.verify import Finding, verify, verify_index

__all__ = [
    "Access",
    "AuditTrail",
    "Checkpointer",
    "Finding",
    "GroupCommit",
    "RequestEvents",
    "Who",
    "audit_event",
    "load_key",
    "load_or_make_key",
    "verify",
    "verify_index",
]
