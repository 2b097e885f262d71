"""One-time use of client assertion ids (``jti``), enforced by the database."""

from __future__ import annotations

import sqlalchemy as sa

from carelink.storage.database import Database
from carelink.storage.loop_guard import loop_bounded
from carelink.storage.tables import client_assertions


@loop_bounded
class ReplayStore:
    """Remembers each client's assertion ids until they expire."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def first_use(self, client_id: str, jti: str, expires_at: int, now: int) -> bool:
        """True the first time this (client, jti) is seen; False for a replay.

        The primary key makes the check atomic across gateway processes;
        expired ids are swept as we go.
        """
        try:
            with self.db.engine.begin() as conn:
                conn.execute(
                    client_assertions.delete().where(client_assertions.c.expires_at < now - 300)
                )
                conn.execute(
                    client_assertions.insert().values(
                        client_id=client_id, jti=jti, expires_at=expires_at
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True
