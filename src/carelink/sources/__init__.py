"""Source adapters: each turns one kind of source system's answers into FHIR R4."""

from carelink.sources.base import Source, SourceAnswer, SourcePerson

__all__ = ["Source", "SourceAnswer", "SourcePerson"]
