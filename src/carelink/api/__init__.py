"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

# importing registers the routes; fhir_routes after the others, as it ends with the /{type}
# catch-all; read_routes last, as its /{type}/{id} and /Patient/{id}/{type} would shadow
# /Patient/{id}, /Patient/{id}/$everything and every other two- and three-part path
from carelink.api import (  # noqa: F401, I001
    audit_routes,
    auth_routes,
    consent_routes,
    export_routes,
    fhir_routes,
)
from carelink.api import read_routes  # noqa: F401
from carelink.api.deps import router

__all__ = ["router"]
