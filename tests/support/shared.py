"""Where the project's shared material lives (``../shared`` beside the repository).

``CARELINK_SHARED_DIR`` points elsewhere. Tests that need it skip, saying so,
when a checkout has no shared folder beside it (a clone in a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(
    os.environ.get("CARELINK_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared"
)
SYNTHEA = SHARED / "testdata" / "synthea-bulk-10"
SCHEMA = SHARED / "fhir" / "fhir.r4.schema.json"
