"""Settings, read once by ``create_app`` or the CLI and passed down."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from carelink.errors import ConfigError
from carelink.storage import Database

T = TypeVar("T")

DEFAULT_SOURCES = {
    "gp": "http://127.0.0.1:8101",
    "acute": "http://127.0.0.1:8102",
    "community": "http://127.0.0.1:8103",
    "social-care": "http://127.0.0.1:8104",
}

#: each source's organisation (ODS code) as Provenance names it; the demo organisations of
#: ``consent/policy.json``. ``registered-practice``: the patient's own GP practice (the
#: ``generalPractitioner`` of the merged Patient), as a GP system serves many practices.
REGISTERED_PRACTICE = "registered-practice"
DEFAULT_SOURCE_ODS = {
    "gp": REGISTERED_PRACTICE,
    "acute": "RAC00",
    "community": "RCM00",
    "social-care": "LSC00",
}
_ODS = re.compile(r"^[A-Z0-9]{3,10}$")
#: a source whose URL has this scheme pushes an HL7 v2 feed over MLLP to that address
#: (``carelink feed listen`` binds it) and is served from what was stored
FEED_SCHEME = "mllp://"
DEFAULT_PUBLIC_BASE = "http://127.0.0.1:8080/fhir"
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_policy_path() -> str:
    """The shipped policy: the repository's ``consent/policy.json``, installed with the
    package as ``carelink/consent_files/`` (a link to ``consent/`` in the repository)."""
    return str(Path(__file__).resolve().parent / "consent_files" / "policy.json")


def default_profiles_path() -> str:
    """The shipped profiles: the repository's ``profiles/``, installed with the package as
    ``carelink/profile_files/`` (a link to ``profiles/`` in the repository)."""
    return str(Path(__file__).resolve().parent / "profile_files")


def _pairs(env: Mapping[str, str], name: str, what: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in env[name].split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"{name} must be name={what}[,name={what}...]")
    return {k.strip(): v.strip() for k, v in pairs}


def _parsed(
    env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], what: str
) -> T:
    if name not in env:
        return default
    try:
        return parse(env[name])
    except ValueError:
        raise ConfigError(f"{name} must be {what}") from None


def _number(env: Mapping[str, str], name: str, default: float, unit: str) -> float:
    return _parsed(env, name, default, float, f"a number of {unit}")


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    return _parsed(env, name, default, int, "a whole number")


def _address(name: str, url: str) -> tuple[str, int]:
    """``mllp://host:port`` as (host, port)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"source {name!r}: a feed address is {FEED_SCHEME}host:port")
    return parts.hostname, port


@dataclass(frozen=True)
class SourceTLS:
    """PEM files for one source's outbound TLS: the client certificate and key (both or
    neither) and the CA bundle that signs the source's server certificate (system CAs
    when unset)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to start; immutable once made."""

    database_url: str = "var/carelink.db"
    #: seconds to connect to the database (and to wait for a pooled connection)
    db_connect_timeout: float = 5.0
    #: seconds a database statement may take (PostgreSQL ``statement_timeout``, SQLite's
    #: busy timeout), and the longest a request waits for the database before its 503
    db_timeout: float = 5.0
    sources: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    #: source name -> its organisation's ODS code (or ``registered-practice``), for
    #: Provenance; a source without one is named by ``urn:carelink:source`` instead
    source_ods: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SOURCE_ODS))
    #: source name -> outbound TLS (client certificate, key, CA) for https sources
    #: (``CARELINK_SOURCE_TLS=gp=cert.pem;key.pem;ca.pem``; empty parts: unset)
    source_tls: Mapping[str, SourceTLS] = field(default_factory=dict)
    #: this gateway as Spine knows it, for GP Connect (``Ssp-From``, the JWT's device):
    #: its ASID, the GP provider's ASID (``Ssp-To``) and its endpoint; empty: the demo's
    gpconnect_asid: str = ""
    gpconnect_provider_asid: str = ""
    gpconnect_endpoint: str = ""
    #: the FHIR profiles (UK Core) the output claims and is checked against
    profiles: str = field(default_factory=lambda: default_profiles_path())
    #: seconds the fan-out waits for sources before answering with what it has
    budget: float = 0.8
    #: "production" refuses development shortcuts
    mode: str = "development"
    #: how callers are authenticated: "jwt" (the default: bearer JWTs from the gateway's
    #: own issuer, or ``issuer`` verified with the ``jwks`` file; ``aud`` = ``audience``)
    #: or "development" (no token; refused in production mode)
    auth: str = "jwt"
    issuer: str | None = None
    audience: str | None = None
    jwks: str | None = None
    #: the gateway's own issuer key (backend-services and development tokens)
    issuer_keys: str = "var/issuer"
    #: registered backend-services clients (JSON); none when unset
    clients: str | None = None
    #: the ICS sharing policy (JSON); by default the repository's ``consent/policy.json``
    consent_policy: str = field(default_factory=lambda: default_policy_path())
    #: where export jobs write their files; by default ``exports/`` beside a SQLite
    #: database (``var/exports`` with PostgreSQL)
    exports: str | None = None
    #: hours an export's files are kept after it was asked for (then deleted)
    export_ttl_hours: float = 24.0
    #: the de-identification profiles (``<profile>.json``); by default ``consent/deid``
    deid_rules: str = field(
        default_factory=lambda: str(Path(default_policy_path()).parent / "deid")
    )
    #: primary care networks for ``Group/pcn-<code>`` cohorts (JSON); none when unset
    pcns: str | None = None
    #: the extract master key file (32+ random bytes; made on first use outside
    #: production); by default ``extract-master.key`` beside a SQLite database
    master_key: str | None = None
    #: the audit checkpoint signing key's folder; by default ``audit/`` beside a SQLite
    #: database (``var/audit`` with PostgreSQL)
    audit_keys: str | None = None
    #: where the gateway writes signed audit checkpoints (outside the database); by
    #: default ``audit-checkpoints/`` beside a SQLite database (``var/audit-checkpoints``)
    audit_checkpoints: str | None = None
    #: a checkpoint after this many audit events ...
    audit_checkpoint_every: int = 1000
    #: ... or this many minutes after the last one, if the trail grew meanwhile
    audit_checkpoint_minutes: float = 5.0
    #: where audit appends run: "process" (a writer process of its own, which never
    #: holds the server's GIL) or "thread" (a thread of the gateway's process)
    audit_writer: str = "process"
    #: processes that make a build's people (0: one a core, at most two,
    #: ``federation.build.writer_processes``); each holds ~150 MB at the full test range
    index_writers: int = 0
    #: milliseconds a group commit of fewer than ``audit.trail.GATHER_EVENTS`` events
    #: waits, once the writer is free, for more requests' events (0, the default: commits
    #: at once), and only while the worker serves more requests than the commit holds:
    #: fewer commits, each answer later by at most this (``GroupCommit``'s window; as
    #: PostgreSQL's ``commit_delay``, off unless measured to help: at the full range it
    #: helped the year-range search's p99 and hurt the one-person forms',
    #: benchmarks/README.md, "The fourteenth stop")
    audit_gather_ms: float = 0.0
    default_page_size: int = 50
    #: seconds a search's stored result stays pageable (its ``next`` links work this long)
    result_ttl: float = 600.0
    #: people's assembled records kept for reuse (``federation.memo``), and as many consent
    #: answers about them (``consent.FilterMemo``); 0: none kept
    record_memo: int = 2_000
    max_page_size: int = 1000
    breaker_threshold: int = 3
    breaker_reset: float = 5.0
    upstream_connections: int = 64
    #: bounded input: request body bytes (413 beyond), request header bytes (431 beyond),
    #: JSON nesting depth and, for a Consent, its provisions and bytes (400/422 beyond)
    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 32 * 1024
    max_json_depth: int = 32
    max_consent_provisions: int = 100
    max_consent_bytes: int = 64 * 1024
    #: the gateway's FHIR base URL as its clients reach it (e.g. behind a proxy:
    #: ``https://carelink.example.nhs.uk/fhir``); every link and ``fullUrl`` is built from
    #: it, never from the request's ``Host`` header. Unset: ``audience``, else the demo's
    #: ``http://127.0.0.1:8080/fhir``
    public_base_url: str | None = None
    #: debug | info (one access line per request) | warning | error
    log_level: str = "info"
    #: whole seconds an idle keep-alive connection is kept open
    keepalive_timeout: int = 5
    #: seconds a client has to send a request head (from connecting, or from the first
    #: byte of a later request on the connection); then 408 and closed (slowloris)
    header_timeout: float = 10.0
    #: a bearer token ``GET /metrics`` requires; unset: /metrics is open (scrape it on a
    #: network clients cannot reach)
    metrics_token: str | None = None

    def public_base(self) -> str:
        """The FHIR base URL for links: ``public_base_url``, else ``audience``, else the
        demo's, without a trailing slash."""
        return (self.public_base_url or self.audience or DEFAULT_PUBLIC_BASE).rstrip("/")

    def validate(self) -> Settings:
        """Refuse unsafe or impossible combinations with a clear message."""
        if self.mode not in ("development", "production"):
            raise ConfigError(f"CARELINK_MODE must be development or production, not {self.mode!r}")
        if self.mode == "production" and self.auth == "development":
            raise ConfigError(
                "production mode refuses development authentication: configure a token issuer "
                "(CARELINK_AUTH) before starting in production"
            )
        if self.auth not in ("development", "jwt"):
            raise ConfigError(f"CARELINK_AUTH must be development or jwt, not {self.auth!r}")
        if bool(self.issuer) != bool(self.jwks):
            raise ConfigError("CARELINK_ISSUER and CARELINK_JWKS go together")
        if not 0 < self.budget <= 30:
            raise ConfigError(
                f"CARELINK_BUDGET must be between 0 and 30 seconds, not {self.budget}"
            )
        if not 0 < self.db_connect_timeout <= 300 or not 0 < self.db_timeout <= 3600:
            raise ConfigError(
                "CARELINK_DB_CONNECT_TIMEOUT must be more than 0 and at most 300 seconds, "
                "CARELINK_DB_TIMEOUT more than 0 and at most 3600"
            )
        if not 0 < self.export_ttl_hours <= 24 * 366:
            raise ConfigError(
                "CARELINK_EXPORT_TTL_HOURS must be more than 0 and at most a year of hours, "
                f"not {self.export_ttl_hours}"
            )
        if self.audit_checkpoint_every < 1 or not 0 < self.audit_checkpoint_minutes <= 24 * 60:
            raise ConfigError(
                "CARELINK_AUDIT_CHECKPOINT_EVERY must be at least 1 and "
                "CARELINK_AUDIT_CHECKPOINT_MINUTES more than 0 and at most a day"
            )
        if not 0 < self.result_ttl <= 86_400:
            raise ConfigError(
                f"CARELINK_RESULT_TTL must be more than 0 and at most 86400 seconds, "
                f"not {self.result_ttl}"
            )
        base = urlsplit(self.public_base())
        if base.scheme not in ("http", "https") or not base.netloc or base.query or base.fragment:
            raise ConfigError(
                "CARELINK_PUBLIC_BASE_URL must be an http:// or https:// URL without query "
                f"or fragment, not {self.public_base()!r}"
            )
        if not 0 <= self.audit_gather_ms <= 50:
            raise ConfigError(
                f"CARELINK_AUDIT_GATHER_MS must be from 0 to 50, not {self.audit_gather_ms}"
            )
        if not 0 <= self.index_writers <= 16:
            raise ConfigError(
                f"CARELINK_INDEX_WRITERS must be a whole number from 0 to 16, "
                f"not {self.index_writers}"
            )
        if self.audit_writer not in ("process", "thread"):
            raise ConfigError(
                f"CARELINK_AUDIT_WRITER must be process or thread, not {self.audit_writer!r}"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"CARELINK_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if not 0 < self.keepalive_timeout <= 3600 or not 0 < self.header_timeout <= 3600:
            raise ConfigError(
                "CARELINK_KEEPALIVE_TIMEOUT and CARELINK_HEADER_TIMEOUT must be more than 0 "
                "and at most 3600 seconds"
            )
        for name, url in self.sources.items():
            if url.startswith(FEED_SCHEME):
                if not name.startswith("community"):
                    raise ConfigError(f"source {name!r}: only community sources take a feed")
                _address(name, url)
            elif not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"source {name!r}: URL must start with http://, https:// or {FEED_SCHEME}"
                )
        for name, ods in self.source_ods.items():
            if ods != REGISTERED_PRACTICE and not _ODS.match(ods):
                raise ConfigError(
                    f"CARELINK_SOURCE_ODS: source {name!r}: {ods!r} is not an ODS code "
                    f"(3 to 10 capital letters and digits, or {REGISTERED_PRACTICE})"
                )
        return self

    def database(self, *, batch: bool = False) -> Database:
        """The database these settings name, with their time limits (``batch``: a command
        that reads or writes whole tables, whose statements get no time limit)."""
        return Database(
            self.database_url,
            connect_timeout=self.db_connect_timeout,
            statement_timeout=None if batch else self.db_timeout,
        )

    def feeds(self) -> dict[str, tuple[str, int]]:
        """The sources that push a feed, and the address (host, port) each sends to."""
        return {
            name: _address(name, url)
            for name, url in self.sources.items()
            if url.startswith(FEED_SCHEME)
        }

    def audit_paths(self) -> tuple[Path, Path]:
        """The audit checkpoint key folder and the checkpoints folder, as configured or
        beside a SQLite database (``var/`` with PostgreSQL)."""
        url = self.database_url
        beside = Path(url).parent if "://" not in url else Path("var")
        keys = Path(self.audit_keys) if self.audit_keys else beside / "audit"
        points = (
            Path(self.audit_checkpoints) if self.audit_checkpoints else beside / "audit-checkpoints"
        )
        return keys, points

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``CARELINK_*`` environment variables over the defaults.

        ``CARELINK_SOURCES`` is ``name=url,name=url``; ``CARELINK_SOURCE_ODS`` is
        ``name=ODS,name=ODS`` over the demo organisations.
        """
        e = os.environ if env is None else env
        s = cls()
        if "CARELINK_DATABASE_URL" in e:
            s = replace(s, database_url=e["CARELINK_DATABASE_URL"])
        if "CARELINK_SOURCES" in e:
            s = replace(s, sources=_pairs(e, "CARELINK_SOURCES", "url"))
        if "CARELINK_SOURCE_TLS" in e:
            tls = {}
            for name, files in _pairs(e, "CARELINK_SOURCE_TLS", "cert;key;ca").items():
                cert, key, ca = ([*files.split(";"), "", ""])[:3]
                tls[name] = SourceTLS(cert or None, key or None, ca or None)
            s = replace(s, source_tls=tls)
        if "CARELINK_SOURCE_ODS" in e:
            s = replace(
                s, source_ods={**s.source_ods, **_pairs(e, "CARELINK_SOURCE_ODS", "ODS code")}
            )
        s = replace(
            s,
            budget=_number(e, "CARELINK_BUDGET", s.budget, "seconds"),
            breaker_reset=_number(e, "CARELINK_BREAKER_RESET", s.breaker_reset, "seconds"),
            result_ttl=_number(e, "CARELINK_RESULT_TTL", s.result_ttl, "seconds"),
            db_connect_timeout=_number(
                e, "CARELINK_DB_CONNECT_TIMEOUT", s.db_connect_timeout, "seconds"
            ),
            db_timeout=_number(e, "CARELINK_DB_TIMEOUT", s.db_timeout, "seconds"),
        )
        if "CARELINK_MODE" in e:
            s = replace(s, mode=e["CARELINK_MODE"])
        s = replace(
            s,
            auth=e.get("CARELINK_AUTH", s.auth),
            issuer=e.get("CARELINK_ISSUER", s.issuer),
            audience=e.get("CARELINK_AUDIENCE", s.audience),
            jwks=e.get("CARELINK_JWKS", s.jwks),
            issuer_keys=e.get("CARELINK_ISSUER_KEYS", s.issuer_keys),
            clients=e.get("CARELINK_CLIENTS", s.clients),
            consent_policy=e.get("CARELINK_CONSENT_POLICY", s.consent_policy),
            exports=e.get("CARELINK_EXPORTS", s.exports),
            export_ttl_hours=_number(e, "CARELINK_EXPORT_TTL_HOURS", s.export_ttl_hours, "hours"),
            deid_rules=e.get("CARELINK_DEID_RULES", s.deid_rules),
            master_key=e.get("CARELINK_MASTER_KEY", s.master_key),
            pcns=e.get("CARELINK_PCNS", s.pcns) or None,
            audit_keys=e.get("CARELINK_AUDIT_KEYS", s.audit_keys) or None,
            audit_checkpoints=e.get("CARELINK_AUDIT_CHECKPOINTS", s.audit_checkpoints) or None,
            audit_checkpoint_every=int(
                _number(e, "CARELINK_AUDIT_CHECKPOINT_EVERY", s.audit_checkpoint_every, "events")
            ),
            audit_checkpoint_minutes=_number(
                e, "CARELINK_AUDIT_CHECKPOINT_MINUTES", s.audit_checkpoint_minutes, "minutes"
            ),
            audit_gather_ms=_number(e, "CARELINK_AUDIT_GATHER_MS", s.audit_gather_ms, "ms"),
            profiles=e.get("CARELINK_PROFILES", s.profiles),
            gpconnect_asid=e.get("CARELINK_GPCONNECT_ASID", s.gpconnect_asid),
            gpconnect_provider_asid=e.get(
                "CARELINK_GPCONNECT_PROVIDER_ASID", s.gpconnect_provider_asid
            ),
            gpconnect_endpoint=e.get("CARELINK_GPCONNECT_ENDPOINT", s.gpconnect_endpoint),
            public_base_url=e.get("CARELINK_PUBLIC_BASE_URL", s.public_base_url) or None,
            log_level=e.get("CARELINK_LOG_LEVEL", s.log_level).lower(),
            audit_writer=e.get("CARELINK_AUDIT_WRITER", s.audit_writer).lower(),
            index_writers=_whole(e, "CARELINK_INDEX_WRITERS", s.index_writers),
            keepalive_timeout=int(
                _number(e, "CARELINK_KEEPALIVE_TIMEOUT", s.keepalive_timeout, "seconds")
            ),
            header_timeout=_number(e, "CARELINK_HEADER_TIMEOUT", s.header_timeout, "seconds"),
            metrics_token=e.get("CARELINK_METRICS_TOKEN", s.metrics_token) or None,
        )
        limits: dict[str, str] = {
            "max_body_bytes": "CARELINK_MAX_BODY_BYTES",
            "max_header_bytes": "CARELINK_MAX_HEADER_BYTES",
            "max_json_depth": "CARELINK_MAX_JSON_DEPTH",
            "max_consent_provisions": "CARELINK_MAX_CONSENT_PROVISIONS",
            "max_consent_bytes": "CARELINK_MAX_CONSENT_BYTES",
        }
        memo = _number(e, "CARELINK_RECORD_MEMO", s.record_memo, "records")
        if memo < 0 or memo != int(memo):
            raise ConfigError(f"CARELINK_RECORD_MEMO must be a whole number of records, not {memo}")
        s = replace(s, record_memo=int(memo))
        for attr, name in limits.items():
            value = _number(e, name, getattr(s, attr), "bytes or items")
            if value < 1 or value != int(value):
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value}")
            s = replace(s, **{attr: int(value)})  # type: ignore[arg-type]
        return s.validate()
