"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

# importing registers the routes; fhir_routes last, as it ends with the /{type} catch-all
from carelink.api import (  # noqa: F401
    audit_routes,
    auth_routes,
    consent_routes,
    export_routes,
    fhir_routes,
)
from carelink.api.deps import router

__all__ = ["router"]
