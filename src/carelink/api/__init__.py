"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

# importing registers the routes; fhir_routes last, as it ends with the /{type} catch-all
from carelink.api import audit_routes, auth_routes, consent_routes, fhir_routes  # noqa: F401
from carelink.api.deps import router

__all__ = ["router"]
