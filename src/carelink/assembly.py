"""The gateway's parts made from settings: source adapters and their HTTP sessions,
consent's guard, the UK Core shaping, the audit checkpointer, where extracts live.

``app.create_app`` (the request path) and ``offline`` (index builds and updates,
extracts, the feed keeper) assemble the same parts from the same settings here, so
both see one configuration.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp

from carelink.audit import Checkpointer, load_key, load_or_make_key
from carelink.consent import Engine, FilterMemo, Guard, Policy
from carelink.errors import ConfigError
from carelink.export.spec import Pcn, load_pcns
from carelink.federation import UkCore
from carelink.fhir.profiles import ProfileSet
from carelink.settings import FEED_SCHEME, Settings
from carelink.sources.base import Source, local_id_system, source_uri
from carelink.sources.community import CommunitySource
from carelink.sources.community_feed import CommunityFeedSource
from carelink.sources.fhir_rest import AcuteSource
from carelink.sources.gpconnect import GPConnectSource
from carelink.sources.gpconnect_request import Consumer
from carelink.sources.http import close_session, lean
from carelink.sources.http1 import Client
from carelink.sources.social_care import SocialCareSource
from carelink.sources.tls import client_context
from carelink.storage import ConsentStore, Database, FeedStore

AdapterFactory = Callable[[aiohttp.ClientSession, str, str], Source]
ADAPTERS: dict[str, AdapterFactory] = {
    "acute": lambda s, url, name: AcuteSource(s, url, name),
    "gp": lambda s, url, name: GPConnectSource(s, url, name),
    "community": lambda s, url, name: CommunitySource(s, url, name),
    "social-care": lambda s, url, name: SocialCareSource(s, url, name),
}


def adapter_kind(name: str) -> str:
    """The adapter kind for a source name (``gp-leeds`` -> ``gp``)."""
    for kind in ADAPTERS:
        if name == kind or name.startswith(kind + "-"):
            return kind
    raise ConfigError(f"source {name!r}: no adapter; names start with one of {sorted(ADAPTERS)}")


def open_sessions(settings: Settings) -> dict[str, aiohttp.ClientSession]:
    """One pooled HTTP session per source (keep-alive, no per-request set-up); a source
    without TLS settings has its plain-HTTP requests sent by the lean client
    (``sources.http1``), within the same limits."""
    return {
        name: lean(session, Client(settings.upstream_connections, settings.budget))
        if name not in settings.source_tls
        else session
        for name, session in _sessions(settings).items()
    }


def _sessions(settings: Settings) -> dict[str, aiohttp.ClientSession]:
    return {
        name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.upstream_connections,
                ttl_dns_cache=300,
                keepalive_timeout=30,
                ssl=client_context(name, tls.cert, tls.key, tls.ca)
                if (tls := settings.source_tls.get(name)) is not None
                else True,
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.budget),
            raise_for_status=False,
        )
        for name in settings.sources
    }


def consumer_of(settings: Settings) -> Consumer:
    """This gateway as GP Connect providers and Spine know it (settings over the demo's)."""
    demo = Consumer()
    return replace(
        demo,
        asid=settings.gpconnect_asid or demo.asid,
        provider_asid=settings.gpconnect_provider_asid or demo.provider_asid,
        endpoint=settings.gpconnect_endpoint or demo.endpoint,
    )


def make_sources(
    settings: Settings, sessions: Mapping[str, aiohttp.ClientSession], db: Database
) -> dict[str, Source]:
    """The configured source adapters; a source at an ``mllp://`` address pushes a feed,
    and is served from what the feed stored (``carelink feed listen`` takes it)."""
    feed = FeedStore(db)
    return {
        name: (
            CommunityFeedSource(feed, name)
            if url.startswith(FEED_SCHEME)
            else GPConnectSource(sessions[name], url, name, consumer=consumer_of(settings))
            if adapter_kind(name) == "gp"
            else ADAPTERS[adapter_kind(name)](sessions[name], url, name)
        )
        for name, url in settings.sources.items()
    }


@asynccontextmanager
async def sources_open(settings: Settings, db: Database) -> AsyncIterator[dict[str, Source]]:
    """The configured source adapters (``make_sources``) over sessions of their own,
    opened for the ``async with`` block and closed when it ends, however it ends: what
    the work off the request path (index builds and updates, extracts, the start-up
    check) asks its sources through."""
    sessions = open_sessions(settings)
    try:
        yield make_sources(settings, sessions, db)
    finally:
        for session in sessions.values():
            await close_session(session)


def checkpointer_of(settings: Settings) -> Checkpointer:
    """Signed checkpoints of the audit trail, written by the gateway as the trail grows.
    The signing key is made on first start, except in production, where it must be
    provisioned (``carelink audit checkpoint`` makes one)."""
    keys, folder = settings.audit_paths()
    return Checkpointer(
        folder,
        load_key(keys) if settings.mode == "production" else load_or_make_key(keys),
        settings.audit_checkpoint_every,
        settings.audit_checkpoint_minutes * 60,
        time.time,
    )


def ukcore_of(profiles: ProfileSet, settings: Settings) -> UkCore:
    """The UK Core shape of the output: the loaded profiles, each source's ODS code."""
    return UkCore(profiles.by_type(), settings.source_ods, profiles.required_by_type())


def require_custodians(policy: Policy, settings: Settings) -> None:
    """Refuse a source the sharing policy does not name: consent finds each source's
    custodian there, so a patient's objection to that organisation's data (a ``CST``
    actor) could never apply to a source missing from it, and would be ignored."""
    for name in settings.sources:
        if policy.custodian(name) is None:
            raise ConfigError(
                f"source {name!r} is not among the organisations of the consent policy "
                f"{settings.consent_policy}: add it (with its custodian's ODS code), so "
                "consent can apply to its data"
            )


def guard_of(policy: Policy, consents: ConsentStore, settings: Settings) -> Guard:
    return Guard(
        Engine(policy),
        consents,
        {source_uri(n): n for n in settings.sources},
        {local_id_system(n): n for n in settings.sources},
        # consent's answers are reused only for remembered records' very objects
        memo=FilterMemo(settings.record_memo) if settings.record_memo else None,
    )


def pcns_of(settings: Settings) -> dict[str, Pcn] | None:
    """The configured primary care networks (``CARELINK_PCNS``), if any."""
    return load_pcns(Path(settings.pcns)) if settings.pcns else None


def export_paths(settings: Settings) -> tuple[Path, Path]:
    """Where extracts and the master key live: as configured, or beside a SQLite file."""
    url = settings.database_url
    beside = Path(url).parent if "://" not in url else Path("var")
    exports = Path(settings.exports) if settings.exports else beside / "exports"
    master = Path(settings.master_key) if settings.master_key else beside / "extract-master.key"
    return exports, master
