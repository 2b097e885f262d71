"""What every FHIR request goes through: the caller, the domain, the base URL.

Routes are plain ``async def (request) -> Response`` endpoints on a FastAPI
router, without per-parameter dependency injection: on the lookup path that
machinery costs more than the lookup itself. Every route starts with
``context(request)``, the one place the caller (``Principal``) is
established, so authentication is filled in there without touching a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carelink.auth import DEVELOPMENT_PRINCIPAL, Principal
from carelink.auth.tokens import Verifier, bearer
from carelink.federation import SharedRecord

Endpoint = Callable[[Request], Awaitable[Response]]


class FhirRouter(APIRouter):
    """An APIRouter whose ``fhir_get`` registers a plain GET endpoint under ``/fhir``."""

    def fhir_get(self, path: str) -> Callable[[Endpoint], Endpoint]:
        """Decorator: ``@router.fhir_get("/Patient")``."""

        def register(endpoint: Endpoint) -> Endpoint:
            self.add_route(self.prefix + path, endpoint, methods=["GET"], include_in_schema=False)
            return endpoint

        return register


router = FhirRouter(prefix="/fhir")


async def principal(request: Request) -> Principal:
    """The caller: from the bearer token when the gateway validates tokens, else the
    development caller (which ``Settings.validate`` refuses in production mode)."""
    verify: Verifier | None = request.app.state.verifier
    if verify is None:
        return DEVELOPMENT_PRINCIPAL
    return verify(bearer(request.headers.get("authorization")))


async def base_url(request: Request) -> str:
    """The FHIR base as the caller sees it (for fullUrl and links), from the Host header."""
    scope = request.scope
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        authority = f"{server[0]}:{server[1]}"
    else:
        authority = host.decode("latin-1")
    return f"{scope['scheme']}://{authority}{scope.get('root_path', '')}/fhir"


async def context(request: Request) -> tuple[SharedRecord, Principal, str]:
    """The domain, the caller and the base URL for one request."""
    record: SharedRecord = request.app.state.record
    return record, await principal(request), await base_url(request)
