"""Federation: the patient index, fan-out with budgets and circuit breaking,
merge with provenance, and ``SharedRecord``, the hot path.
"""

from carelink.federation.fanout import CircuitBreaker, FanOut, SourceResult
from carelink.federation.index import BuildReport, build_index
from carelink.federation.record import Federated, SharedRecord

__all__ = [
    "BuildReport",
    "CircuitBreaker",
    "FanOut",
    "Federated",
    "SharedRecord",
    "SourceResult",
    "build_index",
]
