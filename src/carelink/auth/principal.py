"""Who is calling: the ``Principal`` every request carries into the domain."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The caller, as authentication established it.

    ``role`` is an NHS national RBAC role code (e.g. R8000), ``organisation``
    an ODS code, ``purpose`` a v3 ActReason (TREAT, ETREAT, HRESCH ...),
    ``patient`` set for citizens reading their own record.
    """

    subject: str
    role: str | None
    organisation: str | None
    scopes: frozenset[str]
    purpose: str | None = None
    patient: str | None = None


#: The caller in development mode, before token validation exists (issue #3).
DEVELOPMENT_PRINCIPAL = Principal(
    subject="development-user",
    role="R8000",
    organisation="DEV01",
    scopes=frozenset({"user/*.rs"}),
    purpose="TREAT",
)
