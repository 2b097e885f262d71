"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

# importing registers the routes
from carelink.api import (  # noqa: F401
    audit_routes,
    auth_routes,
    consent_routes,
    export_routes,
    fhir_routes,
    patient_routes,
    review_routes,
)
from carelink.api.deps import router

# The /{type} catch-all must be tried after every fixed path (/Patient, /metadata ...),
# whatever order the modules above happen to register in (a stable sort keeps the rest).
router.routes.sort(key=lambda r: str(getattr(r, "path", "")).startswith(router.prefix + "/{"))

__all__ = ["router"]
