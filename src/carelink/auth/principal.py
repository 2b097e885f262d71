"""Who is calling: the ``Principal`` every request carries into the domain."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson


@dataclass(frozen=True)
class Principal:
    """The caller, as authentication established it.

    ``role`` is an NHS national RBAC role code (e.g. R8000), ``organisation``
    an ODS code, ``purpose`` a v3 ActReason (TREAT, ETREAT, HRESCH ...),
    ``patient`` set for citizens (and those acting for them) reading their own
    record, ``issuer`` the token's ``iss`` and ``client_id`` set only for a
    backend-services client (``client_credentials``: the client is the caller).

    The bare ``subject`` is never an identity on its own: two issuers may both
    have a ``clinician-1``, and one human may hold several role profiles.
    ``identity`` is what grants, reviews and export jobs are bound to.
    """

    subject: str
    role: str | None
    organisation: str | None
    scopes: frozenset[str]
    purpose: str | None = None
    patient: str | None = None
    issuer: str = ""
    client_id: str | None = None

    @cached_property
    def backend(self) -> bool:
        """A backend-services client (no human, no role, no patient context): worked out
        once per principal (its fields never change)."""
        return (
            self.client_id is not None
            and self.client_id == self.subject
            and self.role is None
            and self.organisation is None
            and self.patient is None
        )

    @cached_property
    def identity(self) -> str:
        """The full identity as one stable string: issuer, subject, organisation, role,
        patient context and client id (JSON, so no separator can be smuggled in). Made
        once per principal (a verified token's principal serves all its requests)."""
        parts = [
            self.issuer,
            self.subject,
            self.organisation,
            self.role,
            self.patient,
            self.client_id,
        ]
        return orjson.dumps(parts).decode()

    @cached_property
    def derived(self) -> dict[Any, Any]:
        """What the layers above make from this caller (consent's actor, the audit's
        agent, ...), kept with it by what made it: made once per principal, as a verified
        token's principal serves every request made with that token, and found again
        without hashing the principal's fields. Not part of its value (equality and
        hash are the fields')."""
        return {}

    @cached_property
    def person(self) -> str:
        """The human (or client) behind the token whatever role it claims: issuer and subject."""
        return orjson.dumps([self.issuer, self.subject]).decode()


#: The caller in development mode, before token validation exists (issue #3).
DEVELOPMENT_PRINCIPAL = Principal(
    subject="development-user",
    role="R8000",
    organisation="DEV01",
    scopes=frozenset({"user/*.rs"}),
    purpose="TREAT",
    issuer="urn:carelink:development",
)
