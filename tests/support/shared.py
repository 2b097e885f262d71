"""Test data nobody on the project wrote, vendored under ``tests/data/``.

``tests/data/README.md`` says where each folder came from and under which
licence. ``CARELINK_SHARED_DIR`` points at another copy of the same layout
(``testdata/…`` and ``fhir/…``), e.g. the team's ``../shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
_OTHER = os.environ.get("CARELINK_SHARED_DIR")

SYNTHEA = Path(_OTHER) / "testdata" / "synthea-bulk-10" if _OTHER else DATA / "synthea-bulk-10"
UKCORE_EXAMPLES = (
    Path(_OTHER) / "testdata" / "ukcore-examples" if _OTHER else DATA / "ukcore-examples"
)
SCHEMA = (
    Path(_OTHER) / "fhir" / "fhir.r4.schema.json"
    if _OTHER
    else DATA / "fhir" / "fhir.r4.schema.json"
)
