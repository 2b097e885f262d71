"""Build the gateway from settings: the one place the pieces are wired together."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.datastructures import State
from starlette.exceptions import HTTPException

from carelink import __version__
from carelink.anonymise.keys import load_master_key
from carelink.api import router
from carelink.api.audit_middleware import interaction
from carelink.api.audit_subject import subjects_of
from carelink.api.deps import audit
from carelink.api.front import Front
from carelink.api.responses import from_error, outcome
from carelink.assembly import (
    adapter_kind,
    checkpointer_of,
    export_paths,
    guard_of,
    make_sources,
    open_sessions,
    pcns_of,
    require_custodians,
    ukcore_of,
)
from carelink.audit import AuditTrail, GroupCommit
from carelink.audit.events import REFUSED
from carelink.audit.trail import GATHER_EVENTS, Serving
from carelink.audit.writer import WriterProcess, WriterSpec
from carelink.auth.backend_services import TokenService, load_clients
from carelink.auth.local_issuer import LOCAL_ISSUER, LocalIssuer
from carelink.auth.tokens import TokenPolicy, Verifier, load_keys
from carelink.consent import load_policy
from carelink.errors import (
    AuditError,
    CarelinkError,
    ConfigError,
    StorageUnavailable,
)
from carelink.export.jobs import Runner
from carelink.federation import (
    CircuitBreaker,
    FanOut,
    SharedRecord,
)
from carelink.federation.memo import ParsedPatients, RecordMemo
from carelink.federation.pages import Pages
from carelink.fhir.profiles import load_profiles
from carelink.observability import Metrics, Readiness, Telemetry, source_spans
from carelink.settings import Settings
from carelink.sources.http import close_session
from carelink.storage import (
    UNAVAILABLE,
    ConsentStore,
    Database,
    IndexStore,
    JobStore,
    LocationStore,
    OptOutStore,
    ReplayStore,
    ResultStore,
    describe,
    is_unavailable,
)
from carelink.storage.audit_search import AuditSearch
from carelink.storage.audit_store import AuditStore
from carelink.storage.health import Health

#: Young-generation threshold: the default 700 makes the collector run thousands of
#: times a second under load, and each full collection walks every cached resource.
GC_THRESHOLDS = (50_000, 20, 100)
#: How often long-lived objects (cached source answers) are moved out of the collector's way.
GC_FREEZE_EVERY = 60.0


async def _freeze_long_lived(every: float, first: float = 5.0) -> None:
    """Collect, then freeze what survives, so later collections skip the caches.

    Measured on the 4-source benchmark: full collections of up to 141 ms and
    11% of CPU with the defaults; p99 of $everything 283 -> 99 ms with these settings.
    A collection holds every request for as long as it walks what was made since the
    last freeze, and the caches fill fastest after start: so the first comes after
    ``first`` seconds and the pause doubles up to ``every``, keeping each one short
    (``benchmarks/everything_cpu.py --gc`` reports them).
    """
    pause = min(first, every)
    while True:
        await asyncio.sleep(pause)
        gc.collect()
        gc.freeze()
        pause = min(pause * 2, every)


class Wiring(State):
    """``app.state`` whose values are read as plain attributes of the instance.

    Starlette's ``State`` keeps its values in a dict (``_state``) behind ``__getattr__``,
    which Python calls only after the ordinary lookup has failed: every read of
    ``request.app.state.guard`` first made and formatted an ``AttributeError`` (eight
    reads a lookup, ~6% of the gateway worker's instructions, benchmarks/README.md).
    Here each value set is also an attribute of the instance, set and deleted together
    with the dict's entry, so a read finds it at once. The dict, item access and the
    error for a name never set are Starlette's as before.
    """

    def __setattr__(self, key: Any, value: Any) -> None:
        self._state[key] = value
        if key != "_state":  # the dict itself stays where Starlette keeps it
            object.__setattr__(self, key, value)

    def __delattr__(self, key: Any) -> None:
        del self._state[key]
        if key != "_state":
            object.__delattr__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        self.__delattr__(key)


class Gateway(FastAPI):
    """FastAPI, with HTTP requests entering at the gateway's own outermost middleware.

    The framework wraps the app's middlewares in layers of its own: a server-error
    catcher, its OpenTelemetry exception hook (off here) and its body-size limit
    (unset here). For the gateway they do nothing: ``Front``, the one layer of ours,
    answers a 500 itself for any exception nothing handled (so the framework's
    catcher only ever finds the answer started and passes the exception on), and
    bounds bodies. Each layer costs a call and a frame on every
    resumption of every request, so HTTP requests go straight to ``Front``; the
    lifespan and anything else still take the framework's whole stack. Should a
    framework version no longer lead to ``Front`` through ``.app``, every request
    takes the whole stack, as before.
    """

    _front: Any = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = Wiring()

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        layer: Any = stack
        while layer is not None and not isinstance(layer, Front):
            layer = getattr(layer, "app", None)
        self._front = layer
        return stack

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.root_path:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        front = self._front if self._front is not None else self.middleware_stack
        await front(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway ASGI app. Settings are read here once and passed down."""
    settings = (settings or Settings.from_env()).validate()
    for name in settings.sources:
        adapter_kind(name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = settings.database()
        db.migrate()
        app.state.db = db
        sessions = open_sessions(settings)
        telemetry: Telemetry = app.state.telemetry
        breakers = {
            n: CircuitBreaker(
                settings.breaker_threshold,
                settings.breaker_reset,
                on_change=partial(telemetry.circuit, n),
            )
            for n in settings.sources
        }
        fanout = FanOut(
            make_sources(settings, sessions, db), settings.budget, breakers, watcher=telemetry
        )
        app.state.health = Health(db)
        app.state.readiness = Readiness(app.state.health.ping)
        index = IndexStore(db)
        locations = LocationStore(db)
        app.state.record = SharedRecord(
            index,
            fanout,
            ukcore_of(app.state.profiles, settings),
            locations=locations,
            memo=RecordMemo(settings.record_memo) if settings.record_memo else None,
            patients=ParsedPatients(settings.record_memo) if settings.record_memo else None,
        )
        app.state.pages = Pages(ResultStore(db), settings.result_ttl)
        exports, master = export_paths(settings)
        app.state.jobs = JobStore(db)
        app.state.exports = exports
        consents = ConsentStore(db)
        app.state.consents = consents
        app.state.guard = guard_of(app.state.policy, consents, settings)
        runner = Runner(
            app.state.jobs,
            OptOutStore(db),
            # bulk: no resource_locations rows for whole cohorts, no second rounds for targets
            SharedRecord(index, fanout, fetch_targets=False),
            exports,
            Path(settings.deid_rules),
            load_master_key(master, create=settings.mode != "production"),
            app.state.guard,
            ttl_hours=settings.export_ttl_hours,
        )
        app.state.runner = runner  # a DELETE stops the job it runs (``Runner.stop``)
        app.state.export_ttl = runner.ttl
        exporter = asyncio.create_task(runner.serve())
        app.state.audit = GroupCommit(
            await _audit_committer(settings, db),
            telemetry.audit_committed,
            timeout=settings.db_timeout,
            gather=settings.audit_gather_ms / 1000,
            gather_events=GATHER_EVENTS,
            serving=app.state.serving,
        )
        app.state.audit_search = AuditSearch(db)
        minutes = settings.audit_checkpoint_minutes
        checkpoints = asyncio.create_task(app.state.audit.checkpoints(min(60.0, minutes * 60)))
        if app.state.token_policy is not None:
            app.state.token_service = TokenService(
                app.state.token_clients,
                app.state.token_url,
                str(settings.audience),
                app.state.local_issuer,
                ReplayStore(db),
            )
        gc.set_threshold(*GC_THRESHOLDS)
        # what start-up made (modules, settings, policies) collected once and frozen now,
        # before the first request: no later collection walks it again (the first of
        # ``_freeze_long_lived``'s collections had held every request for ~200 ms)
        gc.collect()
        gc.freeze()
        freezer = asyncio.create_task(_freeze_long_lived(GC_FREEZE_EVERY))
        try:
            yield
        finally:
            freezer.cancel()
            exporter.cancel()
            checkpoints.cancel()
            for session in sessions.values():
                await close_session(session)
            index.close()
            locations.close()
            consents.close()
            app.state.audit.close()
            app.state.health.close()
            db.dispose()

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI's built-in OpenTelemetry looks up providers on every request; off here
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = Gateway(
        **extra,
        title="carelink",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.telemetry = Telemetry(Metrics(), settings.sources, spans=source_spans())
    app.state.policy = load_policy(Path(settings.consent_policy))
    require_custodians(app.state.policy, settings)
    app.state.profiles = load_profiles(Path(settings.profiles))
    app.state.pcns = pcns_of(settings)
    app.state.token_policy = None
    app.state.verifier = None
    app.state.token_service = None
    if settings.auth == "jwt":
        if not settings.audience:
            raise ConfigError("CARELINK_AUTH=jwt needs CARELINK_AUDIENCE (the FHIR base URL)")
        local = LocalIssuer(Path(settings.issuer_keys))
        trusted = {LOCAL_ISSUER: load_keys(str(local.jwks_path))}
        if settings.issuer and settings.jwks:
            trusted[settings.issuer] = load_keys(settings.jwks)
        audience = str(settings.audience)
        app.state.token_policy = TokenPolicy(trusted, audience)
        app.state.verifier = Verifier(app.state.token_policy)
        app.state.token_url = audience.removesuffix("/fhir") + "/auth/token"
        app.state.token_clients = load_clients(Path(settings.clients)) if settings.clients else {}
        app.state.local_issuer = local
    app.include_router(router)
    # the one layer of ours: request ids, the access line and metrics, the audit safety net,
    # the input bounds and the dispatch to the gateway's routes, in that order (api.front)
    app.state.serving = Serving()  # counted by the front layer, read by the audit's window
    app.add_middleware(
        Front,
        serving=app.state.serving,
        telemetry=app.state.telemetry,
        routes=router.routes,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
    )

    @app.exception_handler(CarelinkError)
    async def carelink_error(request: Request, exc: CarelinkError) -> Response:
        # Every refusal is audited, under the person the request named (read from its
        # path, query or body), unless the route already wrote its own event.
        # A database that is away cannot take the event either: the safety net
        # (api.front) makes the one attempt.
        if not isinstance(exc, AuditError | StorageUnavailable) and not getattr(
            request.state, "audited", False
        ):
            try:
                who = await subjects_of(request, read_body=True)
                await audit(request, interaction(request), who, REFUSED, str(exc))
            except (AuditError, StorageUnavailable) as failed:
                return from_error(failed)
        return from_error(exc)

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # the database is down, unreachable or too slow: 503 with Retry-After, no traceback;
        # a driver error that says our schema or SQL is wrong is a fault of ours (500)
        if not is_unavailable(exc):
            raise exc  # on, as any unexpected failure: audited as one, answered 500
        return await carelink_error(request, StorageUnavailable(describe(exc)))

    for unavailable in UNAVAILABLE:
        if not issubclass(unavailable, CarelinkError):
            app.add_exception_handler(unavailable, database_unavailable)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = "not-found" if exc.status_code == 404 else "processing"
        text = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        response = outcome(exc.status_code, code, text)
        if exc.headers:  # e.g. the Allow header of a 405
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return outcome(500, "exception", "internal error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: Any) -> Response:
        return outcome(400, "invalid", "the request is not valid")

    return app


async def _audit_committer(settings: Settings, db: Database) -> AuditTrail | WriterProcess:
    """Where audit appends run (``Settings.audit_writer``). The checkpoint key is loaded
    (or made) here either way, so a missing production key stops the start-up."""
    checkpointer = checkpointer_of(settings)
    if settings.audit_writer == "thread":
        return AuditTrail(AuditStore(db), checkpointer)
    keys, points = settings.audit_paths()
    writer = WriterProcess(
        WriterSpec(
            db.url,
            settings.db_connect_timeout,
            settings.db_timeout,
            str(keys),
            str(points),
            settings.audit_checkpoint_every,
            settings.audit_checkpoint_minutes * 60,
        )
    )
    await writer.start()
    return writer
