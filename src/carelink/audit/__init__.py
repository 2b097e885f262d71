"""The audit trail: BALP-shaped AuditEvents, hash-chained, with signed checkpoints."""

from carelink.audit.events import Access, Who, audit_event
from carelink.audit.trail import AuditTrail, verify

__all__ = ["Access", "AuditTrail", "Who", "audit_event", "verify"]
