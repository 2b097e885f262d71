"""Authentication and authorisation: who the caller is and what they may do."""

from carelink.auth.principal import DEVELOPMENT_PRINCIPAL, Principal

__all__ = ["DEVELOPMENT_PRINCIPAL", "Principal"]
