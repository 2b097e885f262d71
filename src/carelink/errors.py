"""The one exception hierarchy of carelink.

Only ``carelink.api`` turns these into an HTTP status and an
``OperationOutcome``; only ``carelink.cli`` turns them into exit codes.

::

    CarelinkError
    ├── InvalidRequest          400  bad parameter, bad NHS number, bad body
    │   ├── UnsupportedFormat   406  _format / Accept the gateway cannot produce
    │   ├── UnsupportedMediaType 415 a body in a content type the gateway does not read
    │   ├── PayloadTooLarge     413  a body over the configured limit
    │   └── UnprocessableResource 422 a resource body that breaks a rule (e.g. a Consent)
    ├── NotFound                404  no such resource or person
    ├── Gone                    410  a paging cursor that expired, is unknown or is not yours
    ├── Unauthenticated         401  no token, or a token that does not validate
    ├── AccessDenied            403  the caller may not do this
    ├── ConsentDenied           403  the patient's consent forbids it
    ├── SourceError                  one source system failed (never fatal to a request)
    │   ├── SourceUnavailable        connection refused, HTTP 5xx, circuit open
    │   ├── SourceTimeout            no answer within the time budget
    │   ├── SourceBadPayload         an answer that cannot be understood
    │   │   └── SourceWrongKind      the URL answers, but as another kind of system
    │   ├── SourceRefused            the source answered no: consent, access, no such patient
    │   └── SourceNotAsked           the gateway could not ask (GP Connect without an NHS number)
    ├── IndexError_                  the patient index is missing or inconsistent
    ├── ExportError                  a bulk export job failed
    ├── AuditError              503  the audit trail cannot be written
    ├── StorageUnavailable      503  the database cannot be reached or did not answer in time
    └── ConfigError                  settings, policy or profile files are invalid
"""

from __future__ import annotations


class CarelinkError(Exception):
    """Base of every error carelink raises on purpose."""


class InvalidRequest(CarelinkError):
    """The request cannot be answered as asked (HTTP 400).

    ``parameter`` names the offending search parameter or field, so the
    ``OperationOutcome`` can point at it with ``expression``.
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class UnsupportedFormat(InvalidRequest):
    """The caller asked for a representation the gateway does not produce (HTTP 406)."""


class UnsupportedMediaType(InvalidRequest):
    """A body sent as a content type the gateway does not read (HTTP 415)."""


class PayloadTooLarge(InvalidRequest):
    """A request body over the configured limit (HTTP 413)."""


class UnprocessableResource(InvalidRequest):
    """A resource sent to be stored is well-formed JSON but breaks a rule (HTTP 422)."""


class NotFound(CarelinkError):
    """No such resource, person or operation (HTTP 404)."""


class Gone(CarelinkError):
    """A search's stored result is no longer there for this caller (HTTP 410): it expired,
    never existed, belongs to another caller, or the patient's consent changed since."""


class Unauthenticated(CarelinkError):
    """No bearer token, or one that does not validate (HTTP 401).

    The message names what failed (expired, wrong audience ...) but never
    echoes the token.
    """


class AccessDenied(CarelinkError):
    """The caller is not allowed to do this (HTTP 403)."""


class ConsentDenied(AccessDenied):
    """The patient's consent forbids this disclosure (HTTP 403)."""


class SourceError(CarelinkError):
    """One source system failed; the request goes on without its part."""

    status = "error"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class SourceUnavailable(SourceError):
    """Connection refused, HTTP 5xx, or the circuit breaker is open."""

    status = "error"


class SourceTimeout(SourceError):
    """No complete answer within the time budget."""

    status = "timeout"


class SourceBadPayload(SourceError):
    """The source answered with something that cannot be understood."""

    status = "error"


class SourceWrongKind(SourceBadPayload):
    """The source's URL answers, but not as that kind of source system does (the
    council's API configured as the acute EPR, a web server's 404 page): a setting to
    correct. Like any answer that cannot be understood, it says the far end is up, so it
    does not open the circuit; the adapter asks again only now and then."""

    def __init__(self, source: str, url: str, expected: str, found: str) -> None:
        super().__init__(source, f"{url}: not {expected} (found {found})")
        self.args = (f"source {source!r} at {url}: not {expected} (found {found})",)
        self.url = url
        self.expected = expected
        self.found = found


class SourceRefused(SourceError):
    """The source understood the request and declined it, saying why (GP Connect's
    ``NO_PATIENT_CONSENT``, ``PATIENT_NOT_FOUND`` ...); ``code`` is the source's own.
    ``status`` is ``refused``, or ``error`` when the refusal says the gateway's request
    was wrong (``INVALID_PARAMETER``): either way the source is up."""

    status = "refused"

    def __init__(self, source: str, reason: str, code: str = "", status: str = "refused") -> None:
        super().__init__(source, reason)
        self.code = code
        self.status = status


class SourceNotAsked(SourceError):
    """The gateway did not ask the source, and says why (GP Connect is asked by traced
    NHS number only: a person without one is never sent)."""

    status = "not-asked"


class IndexError_(CarelinkError):
    """The patient index is missing or inconsistent."""


class ExportError(CarelinkError):
    """A bulk export job failed."""


class AuditError(CarelinkError):
    """The audit trail cannot be written: patient data must not be served (HTTP 503)."""


class StorageUnavailable(CarelinkError):
    """The database cannot be reached, or did not answer within its time limit (HTTP 503,
    with ``Retry-After``): nothing is served that would need it, and the request is
    tried again later. At start-up (``carelink`` commands) it is a configuration error."""


class ConfigError(CarelinkError):
    """Settings, policy or profile files are invalid; names the file and field."""
