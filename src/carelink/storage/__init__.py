"""Database access: SQLite by default, PostgreSQL for shared deployments."""

from carelink.storage.consent_store import ConsentRow, ConsentStore, GrantRow
from carelink.storage.database import Database
from carelink.storage.export_store import JobRow, JobStore, OptOutStore
from carelink.storage.feed_store import Arrival, FeedRecord, FeedStore
from carelink.storage.index_build import IndexBuild
from carelink.storage.index_rows import FieldsRow, FoundPerson, LinkRow, PersonRow, ReviewRow
from carelink.storage.index_store import IndexStore
from carelink.storage.location_store import LocationStore
from carelink.storage.person_query import DateTest, IdentifierTest, NameTest, PersonQuery
from carelink.storage.replay_store import ReplayStore
from carelink.storage.result_store import ResultStore
from carelink.storage.tables import (
    BIRTH_DATE_LENGTH,
    GENDER_LENGTH,
    LOCAL_ID_LENGTH,
    NAME_LENGTH,
    POSTCODE_LENGTH,
    SOURCE_LENGTH,
)
from carelink.storage.unavailable import UNAVAILABLE, describe, is_unavailable

__all__ = [
    "BIRTH_DATE_LENGTH",
    "GENDER_LENGTH",
    "LOCAL_ID_LENGTH",
    "NAME_LENGTH",
    "POSTCODE_LENGTH",
    "SOURCE_LENGTH",
    "UNAVAILABLE",
    "Arrival",
    "ConsentRow",
    "ConsentStore",
    "Database",
    "DateTest",
    "FeedRecord",
    "FeedStore",
    "FieldsRow",
    "FoundPerson",
    "GrantRow",
    "IdentifierTest",
    "IndexBuild",
    "IndexStore",
    "JobRow",
    "JobStore",
    "LinkRow",
    "LocationStore",
    "NameTest",
    "OptOutStore",
    "PersonQuery",
    "PersonRow",
    "ReplayStore",
    "ResultStore",
    "ReviewRow",
    "describe",
    "is_unavailable",
]
