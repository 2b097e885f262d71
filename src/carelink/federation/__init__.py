"""Federation: the patient index, fan-out with budgets and circuit breaking,
merge with provenance, the UK Core shape of the output, and ``SharedRecord``,
the hot path.
"""

from carelink.federation.build import build_index
from carelink.federation.fanout import CircuitBreaker, FanOut, SourceResult, Watcher
from carelink.federation.index import BuildReport
from carelink.federation.record import Federated, SharedRecord
from carelink.federation.ukcore import UkCore, with_nhs_number_status

__all__ = [
    "BuildReport",
    "CircuitBreaker",
    "FanOut",
    "Federated",
    "SharedRecord",
    "SourceResult",
    "UkCore",
    "Watcher",
    "build_index",
    "with_nhs_number_status",
]
