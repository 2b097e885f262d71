"""Federation: the patient index (built, kept up to date by changes), fan-out with
budgets and circuit breaking, merge with provenance, the UK Core shape of the
output, and ``SharedRecord``, the hot path.
"""

from carelink.federation.build import build_index
from carelink.federation.changes import (
    Change,
    ChangeReport,
    MergeRecords,
    NhsNumberSuperseded,
    Remove,
    Upsert,
    apply_changes,
)
from carelink.federation.fanout import CircuitBreaker, FanOut, SourceResult, Watcher
from carelink.federation.index import BuildReport
from carelink.federation.record import Federated, SharedRecord
from carelink.federation.ukcore import UkCore, with_nhs_number_status
from carelink.federation.update import Drift, UpdateReport, reconcile, update_from

__all__ = [
    "BuildReport",
    "Change",
    "ChangeReport",
    "CircuitBreaker",
    "Drift",
    "FanOut",
    "Federated",
    "MergeRecords",
    "NhsNumberSuperseded",
    "Remove",
    "SharedRecord",
    "SourceResult",
    "UkCore",
    "UpdateReport",
    "Upsert",
    "Watcher",
    "apply_changes",
    "build_index",
    "reconcile",
    "update_from",
    "with_nhs_number_status",
]
