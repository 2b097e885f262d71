"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

from carelink.api import auth_routes, fhir_routes  # noqa: F401 - importing registers the routes
from carelink.api.deps import router

__all__ = ["router"]
