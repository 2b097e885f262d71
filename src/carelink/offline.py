"""What runs off the request path, from the same settings as the gateway: building,
updating and reconciling the patient index, the feed keeper beside ``feed listen``,
and an extract run in this process (``carelink extract``)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from carelink.anonymise.keys import load_master_key
from carelink.assembly import (
    export_paths,
    guard_of,
    require_custodians,
    sources_open,
    ukcore_of,
)
from carelink.consent import load_policy
from carelink.errors import SourceBadPayload, SourceWrongKind
from carelink.export.pipeline import Extracted, extract
from carelink.export.spec import ExtractSpec
from carelink.federation import BuildReport, FanOut, SharedRecord, build_index
from carelink.federation.build import Progress, writer_processes
from carelink.federation.keeper import keep_current
from carelink.federation.update import Drift, UpdateReport, reconcile, update_from
from carelink.feeds.run import FeedKeeper
from carelink.fhir.profiles import load_profiles
from carelink.settings import Settings
from carelink.sources.base import Source
from carelink.sources.community_feed import CommunityFeedSource
from carelink.sources.kind import confirm_kinds
from carelink.storage import ConsentStore, Database, FeedStore, IndexStore, OptOutStore


async def build_index_from(
    settings: Settings, store: IndexStore, progress: Progress | None = None
) -> BuildReport:
    """Open sessions, build the index from every configured source, close the sessions.

    Index building reads whole populations, so it gets a generous connect timeout
    rather than the request path's budget.
    """
    try:
        async with sources_open(replace(settings, budget=30.0), store.db) as named:
            await confirm_kinds(named)  # a wrong kind of system fails before anything is read
            sources = list(named.values())
            # the merge per person is CPU-bound: spread over processes (on SQLite they
            # take turns for their inserts only; benchmarks/README, "The eighteenth stop")
            writers = settings.index_writers or writer_processes(os.cpu_count())
            return await build_index(
                sources, store, progress=progress, refuse_empty=True, writers=writers
            )
    except SourceWrongKind:
        raise  # names its URL already
    except SourceBadPayload as exc:
        url = settings.sources.get(exc.source, "")
        raise SourceBadPayload(exc.source, f"{url}: {exc.reason}") from None


async def update_index_from(settings: Settings, store: IndexStore) -> UpdateReport:
    """Apply the changes every configured source lists since its watermark."""
    async with sources_open(replace(settings, budget=30.0), store.db) as named:
        await confirm_kinds(named)
        return await update_from(list(named.values()), store)


async def reconcile_from(settings: Settings, store: IndexStore, fix: bool) -> dict[str, Drift]:
    """Compare every configured source's whole listing with the index (``fix``: apply)."""
    async with sources_open(replace(settings, budget=30.0), store.db) as sources:
        await confirm_kinds(sources)
        return {name: await reconcile(s, store, fix) for name, s in sources.items()}


def feed_keeper(settings: Settings, every: float = 30.0) -> FeedKeeper:
    """What ``carelink feed listen`` runs beside its listeners: the index kept current
    from what the feeds stored, woken by the listener as soon as an ADT message that
    changes someone is stored (and every ``every`` seconds regardless). The first update
    takes whatever was stored but not applied before a restart. Updates run on a thread
    of their own, so the listeners go on acknowledging meanwhile."""

    async def keep(db: Database, wake: asyncio.Event) -> None:
        index = IndexStore(db)
        feed = FeedStore(db)
        sources: list[Source] = [CommunityFeedSource(feed, name) for name in settings.feeds()]

        async def update() -> UpdateReport:
            return await asyncio.to_thread(lambda: asyncio.run(update_from(sources, index)))

        await keep_current(update, every, wake)

    return keep


async def extract_with(
    settings: Settings, spec: ExtractSpec, out: Path, progress: Any = None
) -> Extracted:
    """Run an extract in this process (``carelink extract``): the same pipeline as ``$export``."""
    policy = load_policy(Path(settings.consent_policy))
    require_custodians(policy, settings)
    db = settings.database(batch=True)
    db.migrate()
    bulk = replace(settings, budget=max(settings.budget, 5.0))  # an extract can wait longer
    index = IndexStore(db)
    try:
        async with sources_open(bulk, db) as sources:
            _, master = export_paths(settings)
            return await extract(
                SharedRecord(
                    index,
                    FanOut(sources, bulk.budget),
                    ukcore_of(load_profiles(Path(settings.profiles)), settings),
                    fetch_targets=False,
                ),
                spec,
                load_master_key(master, create=settings.mode != "production"),
                Path(settings.deid_rules),
                OptOutStore(db).all(),
                out,
                progress,
                guard=guard_of(policy, ConsentStore(db), settings),
            )
    finally:
        index.close()
        db.dispose()
