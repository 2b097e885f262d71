"""The per-source OperationOutcome (``record.source_outcome``): one status issue per
source with its latency and as-of, a ``skipped`` warning and a ``notes`` issue where the
source had them; the parts that do not change with the latency are made once and shared,
so an outcome made later never changes one made before."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from carelink.federation.fanout import SourceResult
from carelink.federation.record import (
    EXT_AS_OF,
    EXT_LATENCY,
    EXT_SKIPPED,
    EXT_SOURCE,
    NOTES_SYSTEM,
    PROBLEM_SYSTEM,
    SKIPPED_SHOWN,
    STATUS_SYSTEM,
    source_outcome,
)

STATUSES = ["ok", "timeout", "error", "circuit-open", "not-known", "refused", "not-asked"]
SEVERITY = {"ok": "information", "not-known": "information"}
CODE = {
    "ok": "informational",
    "not-known": "informational",
    "timeout": "timeout",
    "circuit-open": "transient",
    "error": "transient",
    "refused": "forbidden",
    "not-asked": "not-supported",
}

results = st.builds(
    SourceResult,
    source=st.sampled_from(["acute", "gp", "community", "social-care"]),
    status=st.sampled_from(STATUSES),
    latency_ms=st.floats(0, 5000, allow_nan=False),
    as_of=st.none() | st.sampled_from(["2026-01-01T00:00:00Z", "2026-02-03T04:05:06Z"]),
    reason=st.none() | st.sampled_from(["HTTP 500", "no answer within 800 ms"]),
    skipped=st.lists(st.sampled_from(["entry 1: no id", "entry 2: no type"]), max_size=12).map(
        tuple
    ),
    notes=st.lists(st.sampled_from(["withheld: 2", "unknown: _since"]), max_size=2).map(tuple),
)


def expected_issues(r: SourceResult) -> list[dict[str, Any]]:
    """What the outcome says of one source, written out plainly (the specification)."""
    ext: list[dict[str, Any]] = [
        {"url": EXT_SOURCE, "valueString": r.source},
        {"url": EXT_LATENCY, "valueDecimal": round(r.latency_ms, 1)},
    ]
    if r.as_of:
        ext.append({"url": EXT_AS_OF, "valueInstant": r.as_of})
    if r.skipped:
        ext.append({"url": EXT_SKIPPED, "valueInteger": len(r.skipped)})
    text = f"source {r.source}: {r.status}"
    if r.status == "ok":
        text += f" in {r.latency_ms:.0f} ms, data as of {r.as_of}"
        if r.skipped:
            text += f"; {len(r.skipped)} unreadable resources left out"
    elif r.reason:
        text += f" ({r.reason})"
    out = [
        {
            "severity": SEVERITY.get(r.status, "warning"),
            "code": CODE[r.status],
            "diagnostics": text,
            "details": {"coding": [{"system": STATUS_SYSTEM, "code": r.status}], "text": r.status},
            "extension": ext,
        }
    ]
    if r.skipped:
        more = len(r.skipped) - SKIPPED_SHOWN
        out.append(
            {
                "severity": "warning",
                "code": "processing",
                "diagnostics": f"source {r.source} left out {len(r.skipped)} unreadable "
                f"resources: {'; '.join(r.skipped[:SKIPPED_SHOWN])}"
                + (f"; and {more} more" if more > 0 else ""),
                "details": {
                    "coding": [{"system": PROBLEM_SYSTEM, "code": "skipped"}],
                    "text": "skipped",
                },
                "extension": [
                    {"url": EXT_SOURCE, "valueString": r.source},
                    {"url": EXT_SKIPPED, "valueInteger": len(r.skipped)},
                ],
            }
        )
    if r.notes:
        out.append(
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"source {r.source} says: " + "; ".join(r.notes),
                "details": {"coding": [{"system": NOTES_SYSTEM, "code": "notes"}], "text": "notes"},
                "extension": [{"url": EXT_SOURCE, "valueString": r.source}],
            }
        )
    return out


@given(st.lists(results, max_size=5))
def test_each_source_has_its_issues_in_order_as_bytes(drawn):
    """Byte for byte (key order included: the page's JSON is made from it)."""
    outcome = source_outcome(drawn)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["id"] == "sources"
    want = [i for r in drawn for i in expected_issues(r)]
    assert orjson.dumps(outcome["issue"]) == orjson.dumps(want)


def test_an_outcome_made_later_leaves_one_made_before_as_it_was():
    """The shared parts are shared; the latency and the text are each outcome's own."""
    first = source_outcome([SourceResult("gp", "ok", 12.34, as_of="2026-01-01T00:00:00Z")])
    before = orjson.dumps(first)
    second = source_outcome([SourceResult("gp", "ok", 98.76, as_of="2026-01-01T00:00:00Z")])
    assert orjson.dumps(first) == before
    assert first["issue"][0]["extension"][1]["valueDecimal"] == 12.3
    assert second["issue"][0]["extension"][1]["valueDecimal"] == 98.8
    assert "in 12 ms" in first["issue"][0]["diagnostics"]
    assert "in 99 ms" in second["issue"][0]["diagnostics"]
    assert first["issue"] is not second["issue"]
