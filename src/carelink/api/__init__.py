"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

# importing registers the routes; read_routes last, as its /Patient/{id}/{type} would
# shadow /Patient/{id}/$everything
from carelink.api import (  # noqa: F401, I001
    audit_routes,
    auth_routes,
    consent_routes,
    export_routes,
    fhir_routes,
    patient_routes,
    probe_routes,
    review_routes,
)
from carelink.api import read_routes  # noqa: F401
from carelink.api.deps import router

# The /{type} and /{type}/{id} catch-alls must be tried after every fixed path (/Patient,
# /metadata ...), whatever order the modules above register in (a stable sort keeps the rest).
router.routes.sort(key=lambda r: str(getattr(r, "path", "")).startswith(router.prefix + "/{"))

__all__ = ["router"]
