"""The integration tests' running system (simulators and index), for attacks on a real gateway."""

from tests.integration.conftest import system

__all__ = ["system"]
