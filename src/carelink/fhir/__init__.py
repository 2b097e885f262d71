"""FHIR mechanics on plain dicts: Bundles, OperationOutcomes, search values,
NHS numbers, JSON bytes, profiles (UK Core) and the check against them.
Imports nothing else of carelink but its errors.
"""

from carelink.fhir.bundle import entry, searchset
from carelink.fhir.jsonio import FHIR_JSON, dumps, dumps_canonical, loads
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, check_digit, is_valid, normalise, problem
from carelink.fhir.outcome import error_outcome, issue, operation_outcome
from carelink.fhir.profile_check import check
from carelink.fhir.profiles import ProfileSet, load_profiles

__all__ = [
    "FHIR_JSON",
    "NHS_NUMBER_SYSTEM",
    "ProfileSet",
    "check",
    "check_digit",
    "dumps",
    "dumps_canonical",
    "entry",
    "error_outcome",
    "is_valid",
    "issue",
    "load_profiles",
    "loads",
    "normalise",
    "operation_outcome",
    "problem",
    "searchset",
]
