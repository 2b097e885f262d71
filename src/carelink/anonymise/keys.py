"""Keys for one project's extract, derived from the master key with HKDF.

Each project gets its own pseudonym, date-shift and encryption keys
(HKDF-SHA256, RFC 5869, with the project name in ``info``), so two projects'
extracts cannot be linked by their pseudonyms, and the master key never
touches data. NHS numbers are normalised and check-digit validated before
they are hashed, so ``943 476 5919`` and ``9434765919`` get one pseudonym and
a mistyped number never becomes someone else's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carelink.errors import ConfigError, InvalidRequest
from carelink.fhir.nhs import normalise, problem
from carelink.secret_files import create_secret

MIN_MASTER_BYTES = 32


def derive(master: bytes, project: str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` within ``project``."""
    if len(master) < MIN_MASTER_BYTES:
        raise ConfigError(f"the master key must be at least {MIN_MASTER_BYTES} bytes")
    if not project:
        raise ConfigError("an extract needs a project name (its keys are derived from it)")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"carelink extract keys v1",
        info=f"{project}\x00{purpose}".encode(),
    ).derive(master)


@dataclass(frozen=True)
class ProjectKeys:
    """The keys of one project."""

    project: str
    pseudonym_key: bytes
    date_key: bytes
    encrypt_key: bytes

    @classmethod
    def for_project(cls, master: bytes, project: str) -> ProjectKeys:
        """Derive a project's keys."""
        return cls(
            project,
            derive(master, project, "pseudonym"),
            derive(master, project, "date-shift"),
            derive(master, project, "encrypt"),
        )

    def pseudonym(self, value: str) -> str:
        """Keyed hash (HMAC-SHA256, hex) of an identifier."""
        return hmac.new(self.pseudonym_key, value.encode(), hashlib.sha256).hexdigest()

    def nhs_pseudonym(self, nhs_number: str) -> str:
        """The pseudonym of an NHS number, after normalising and checking it."""
        why = problem(nhs_number)
        if why is not None:
            raise InvalidRequest(f"not an NHS number: {why}")
        return self.pseudonym("nhs:" + normalise(nhs_number))

    def shift_days(self, person: str, max_days: int, min_days: int = 1) -> int:
        """The person's date shift: uniform over ``[-max_days, -min_days]`` and
        ``[min_days, max_days]``, so never 0 and never smaller than ``min_days``.

        Derived with HMAC from the person's pseudonym: the same for every
        resource of that person from every source, and unrelated between
        people, so two known true dates reveal nothing about anyone else's shift.
        With ``min_days=1`` the shifts are the ones earlier releases gave.
        """
        if not 1 <= min_days <= max_days:
            raise ConfigError(f"a date shift needs 1 <= minimum ({min_days}) <= range ({max_days})")
        width = max_days - min_days + 1
        digest = hmac.new(self.date_key, person.encode(), hashlib.sha256).digest()
        n = int.from_bytes(digest[:8], "big") % (2 * width)
        return n - max_days if n < width else n - width + min_days


def load_master_key(path: Path, create: bool) -> bytes:
    """The master key from its file; made (32 random bytes, mode 0600) only when ``create``."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < MIN_MASTER_BYTES:
            raise ConfigError(f"{path}: the extract master key must be at least 32 bytes")
        return key
    if not create:
        raise ConfigError(f"{path}: no extract master key (production mode never makes one)")
    key = os.urandom(32)
    create_secret(path, key)
    return key
