"""carelink: a shared-care-record gateway.

One FHIR R4 endpoint in front of the record systems of an integrated care
system. See ``DESIGN.md`` in the project's shared material for the map; the
packages below follow it one idea per folder.
"""

__version__ = "0.1.0"
