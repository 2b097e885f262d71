"""FastAPI dependencies: the one place every request's caller is established."""

from __future__ import annotations

from fastapi import Request

from carelink.auth import DEVELOPMENT_PRINCIPAL, Principal
from carelink.federation import SharedRecord


async def principal(request: Request) -> Principal:
    """The caller. Development mode only until token validation lands (issue #3);
    ``Settings.validate`` refuses production mode with development auth."""
    return DEVELOPMENT_PRINCIPAL


async def shared_record(request: Request) -> SharedRecord:
    """The app's ``SharedRecord`` (made once at start-up)."""
    record: SharedRecord = request.app.state.record
    return record


async def base_url(request: Request) -> str:
    """The FHIR base as the caller sees it (for fullUrl and links)."""
    return str(request.base_url).rstrip("/") + "/fhir"
