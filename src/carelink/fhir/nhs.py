"""NHS number checks.

The modulus-11 arithmetic comes from the ``nhs-number`` package (the one the
PDS FHIR API documentation recommends); this module adds the shapes carelink
needs: normalisation of what people type, a clear reason for a refusal, and
the FHIR identifier system.
"""

from __future__ import annotations

from functools import lru_cache

from nhs_number.validate import calculate_checksum

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

#: The range NHS England reserves for test data: 999 000 0000 - 999 999 9999.
TEST_RANGE_PREFIX = "999"


def normalise(value: str) -> str:
    """Strip the spaces and hyphens people type (``"943 476 5919"`` -> ``"9434765919"``)."""
    return value.replace(" ", "").replace("-", "").strip()


@lru_cache(maxsize=65_536)  # the lookup checks the same numbers again and again
def problem(value: str) -> str | None:
    """Say what is wrong with an NHS number, or ``None`` if it is valid.

    >>> problem("9434765919") is None
    True
    >>> problem("9434765918")
    'check digit does not match (modulus 11)'
    """
    digits = normalise(value)
    if not digits.isdigit():
        return "must be 10 digits"
    if len(digits) != 10:
        return f"must be 10 digits, got {len(digits)}"
    check = calculate_checksum(digits[:9])
    if check is None or check == 10:
        return "no valid check digit exists for the first nine digits (modulus 11)"
    if check != int(digits[9]):
        return "check digit does not match (modulus 11)"
    return None


def is_valid(value: str) -> bool:
    """True when ``value`` is a well-formed NHS number with a correct check digit."""
    return problem(value) is None


def check_digit(first_nine: str) -> int | None:
    """The modulus-11 check digit for nine digits, or ``None`` when none exists."""
    check = calculate_checksum(first_nine)
    return None if check is None or check == 10 else int(check)
