"""FastAPI routers and dependencies: HTTP in, domain call, HTTP out."""

from carelink.api.fhir_routes import router

__all__ = ["router"]
