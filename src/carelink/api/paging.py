"""Paging and partial answers at the HTTP edge.

- A paging cursor belongs to the caller who started the search: ``owner`` is a
  digest of everything that shapes what they may see (subject, organisation,
  role, purpose, scopes, patient context).
- ``X-Carelink-Missing-Sources`` names the sources whose part of the answer is
  missing, as a comma-separated list of ``<source>;status=<status>`` items
  (an RFC 8941 structured-field list of tokens with one parameter), e.g.
  ``acute;status=timeout, gp;status=circuit-open``. The header is absent when
  nothing is missing. Sources consent hides from the caller are never named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import orjson

from carelink.auth import Principal
from carelink.consent import Situation
from carelink.federation.fanout import CIRCUIT_OPEN, ERROR, TIMEOUT, SourceResult
from carelink.fhir.outcome import issue, operation_outcome

Json = dict[str, object]

MISSING_HEADER = "X-Carelink-Missing-Sources"
FAILED = (TIMEOUT, ERROR, CIRCUIT_OPEN)
_CODE = {TIMEOUT: "timeout"}


def owner(caller: Principal) -> str:
    """Who a stored result belongs to: the same person in the same role, organisation,
    purpose and scopes (a changed scope or purpose is a different caller)."""
    shape = [
        caller.subject,
        caller.organisation,
        caller.role,
        caller.purpose,
        sorted(caller.scopes),
        caller.patient,
    ]
    return hashlib.blake2b(orjson.dumps(shape), digest_size=32).hexdigest()


def consent_digest(situation: Situation) -> str:
    """The patient's consent as it shaped a result (a change ends its cursor)."""
    return hashlib.blake2b(repr(situation.directives).encode(), digest_size=16).hexdigest()


def missing(results: Iterable[SourceResult], hidden: frozenset[str]) -> list[str]:
    """Header items for the sources that failed, leaving out those hidden by consent."""
    return [
        f"{r.source};status={r.status}"
        for r in results
        if r.status in FAILED and r.source not in hidden
    ]


def unavailable(items: list[str]) -> Json:
    """The OperationOutcome of a refused partial answer (``Prefer: partial=fail``)."""
    issues = []
    for item in items:
        source, _, status = item.partition(";status=")
        issues.append(
            issue(
                "error",
                _CODE.get(status, "transient"),
                f"source {source}: {status}; the answer would be incomplete "
                "and Prefer: partial=fail asked for no partial answers",
            )
        )
    return operation_outcome(issues)
