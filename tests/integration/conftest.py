"""The integration tests' whole system lives in ``tests.support.system`` (its fixture is
registered once, in the root conftest, so every package shares one instance)."""

from tests.support.system import SEED, SIZE, System

__all__ = ["SEED", "SIZE", "System"]
