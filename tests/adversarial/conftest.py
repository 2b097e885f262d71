"""The integration tests' whole system (four simulators, an index), for attacks on it."""

from tests.integration.conftest import system

__all__ = ["system"]
