"""Give a source's FHIR resources gateway-wide ids and references."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from carelink.sources.base import Json, source_uri

_MAX_ID = 64
#: letters and digits (as ``str.isalnum`` has them: ``\w`` but the underscore), "-" and "."
_PLAIN_ID = re.compile(r"(?:[^\W_]|[-.])+")


def namespaced_id(source: str, local: str) -> str:
    """``<source>-<local>``, hashed when it would exceed FHIR's 64-character id limit."""
    candidate = f"{source}-{local}"
    if len(candidate) <= _MAX_ID and _PLAIN_ID.fullmatch(candidate):
        return candidate
    digest = hashlib.blake2b(local.encode(), digest_size=16).hexdigest()
    return f"{source}-{digest}"


def namespace(resource: Json, source: str, patient_local_ref: str, patient_ref: str) -> Json:
    """Rewrite ``resource`` in place: id, ``meta.source`` and every relative reference.

    A reference to the person's own Patient at the source
    (``patient_local_ref``, e.g. ``Patient/123``) becomes ``patient_ref``; any
    other relative ``Type/id`` reference becomes ``Type/<source>-<id>``.
    Absolute, contained (``#``) and conditional (``Type?identifier=...``) references
    are left alone: federation resolves conditional ones against the merged record.
    """
    if "id" in resource:
        resource["id"] = namespaced_id(source, str(resource["id"]))
    meta = resource.get("meta")
    if meta is None:
        meta = resource["meta"] = {}
    meta["source"] = source_uri(source)
    meta.pop("versionId", None)
    if not _may_refer(resource):
        return resource  # nothing to rewrite (a Patient in a listing, often): skip the walk
    for key, value in resource.items():
        if key not in ("id", "meta", "resourceType"):
            _rewrite(value, source, patient_local_ref, patient_ref)
    return resource


def _may_refer(resource: Json) -> bool:
    """Whether any ``reference`` key may be inside (one C-speed dump beats the walk)."""
    try:
        return b'"reference"' in orjson.dumps(resource)
    except (TypeError, orjson.JSONEncodeError):
        return True


def _rewrite(value: Any, source: str, own: str, patient_ref: str) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            value["reference"] = _map_ref(ref, source, own, patient_ref)
        for v in value.values():
            if isinstance(v, dict | list):
                _rewrite(v, source, own, patient_ref)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict | list):
                _rewrite(v, source, own, patient_ref)


def _map_ref(ref: str, source: str, own: str, patient_ref: str) -> str:
    if ref == own:
        return patient_ref
    if ref.startswith("#") or "://" in ref or ref.startswith("urn:") or "?" in ref:
        return ref
    parts = ref.split("/")
    if len(parts) == 2:
        return f"{parts[0]}/{namespaced_id(source, parts[1])}"
    return ref
