"""Database access: SQLite by default, PostgreSQL for shared deployments."""

from carelink.storage.consent_store import ConsentRow, ConsentStore, GrantRow
from carelink.storage.database import Database
from carelink.storage.index_store import IndexStore, LinkRow, PersonRow, ReviewRow
from carelink.storage.replay_store import ReplayStore

__all__ = [
    "ConsentRow",
    "ConsentStore",
    "Database",
    "GrantRow",
    "IndexStore",
    "LinkRow",
    "PersonRow",
    "ReplayStore",
    "ReviewRow",
]
