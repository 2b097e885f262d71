"""carelink: a shared-care-record gateway.

One FHIR R4 endpoint in front of the record systems of an integrated care
system. ``docs/architecture.md`` in the repository is the map: one package per
idea, and which may import which.
"""

#: The one place the version is written: the build reads it (pyproject.toml's
#: ``[tool.setuptools.dynamic]``), the CapabilityStatement and OpenAPI show it.
__version__ = "0.1.0"
