"""The token endpoint and SMART discovery."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from carelink.api.deps import base_url, router
from carelink.api.responses import outcome
from carelink.auth.backend_services import (
    CLIENT_ALGORITHMS,
    JWKS_FETCH_TIMEOUT,
    OAuthError,
    TokenService,
)
from carelink.errors import StorageUnavailable
from carelink.fhir import dumps

JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def token(request: Request) -> Response:
    """RFC 6749 token endpoint (client_credentials + private_key_jwt)."""
    service: TokenService | None = request.app.state.token_service
    if service is None:
        return outcome(404, "not-found", "this gateway issues no tokens (development mode)")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        error = OAuthError("invalid_request", "send application/x-www-form-urlencoded")
        return Response(dumps(error.body()), 400, media_type=JSON, headers=NO_STORE)
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    try:
        # A registered JWKS URL may be fetched, and the replay check writes: off the event
        # loop, and waited for no longer than the fetch's and the database's time limits
        limit = JWKS_FETCH_TIMEOUT + request.app.state.settings.db_timeout
        body = await asyncio.wait_for(run_in_threadpool(service.exchange, form), limit)
    except TimeoutError:
        raise StorageUnavailable("the token service did not answer in time") from None
    except OAuthError as exc:
        return Response(dumps(exc.body()), exc.status, media_type=JSON, headers=NO_STORE)
    return Response(dumps(body), 200, media_type=JSON, headers=NO_STORE)


router.add_route("/auth/token", token, methods=["POST"], include_in_schema=False)


@router.fhir_get("/.well-known/smart-configuration")
async def smart_configuration(request: Request) -> Response:
    """What a SMART client needs to know to get a token here."""
    if request.app.state.token_service is None:
        return outcome(404, "not-found", "no SMART authorisation in development mode")
    base = base_url(request)
    return Response(
        dumps(
            {
                "token_endpoint": request.app.state.token_url,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ALGORITHMS),
                "grant_types_supported": ["client_credentials"],
                "scopes_supported": ["system/*.rs", "system/*.read", "user/*.rs", "patient/*.rs"],
                "capabilities": [
                    "client-confidential-asymmetric",
                    "permission-v1",
                    "permission-v2",
                ],
                "fhir_base": base,
            }
        ),
        media_type=JSON,
    )
