"""The social-care mapping read strictly, for tests of single mappings."""

from __future__ import annotations

from typing import Any

from carelink.errors import SourceBadPayload
from carelink.sources.social_care_map import read_case


def record(doc: dict[str, Any], source: str, patient_ref: str) -> list[dict[str, Any]]:
    """Every resource of one case (``read_case``), failing on the first item it left out,
    so a test of one mapping cannot pass on a silently skipped item."""
    out, skipped = read_case(doc, source, patient_ref)
    if skipped:
        raise SourceBadPayload(source, skipped[0])
    return out
