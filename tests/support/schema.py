"""Validation against the official FHIR R4 JSON schema in ../shared."""

from __future__ import annotations

import json
from functools import cache

import jsonschema
import pytest

from tests.support.shared import SCHEMA


@cache
def _definitions() -> dict:
    if not SCHEMA.exists():
        # Without R4 truth the test cannot say what it claims: skip it, saying why.
        pytest.skip(f"the official R4 schema is not at {SCHEMA} (set CARELINK_SHARED_DIR)")
    return json.loads(SCHEMA.read_text())["definitions"]


@cache
def validator(resource_type: str) -> jsonschema.Draft6Validator:
    """A validator for one resource type (field-level errors, unlike the top-level schema)."""
    return jsonschema.Draft6Validator(
        {"$ref": f"#/definitions/{resource_type}", "definitions": _definitions()}
    )


def problems(resource: dict) -> list[str]:
    """What is wrong with a resource, one line per problem; empty when it is valid R4."""
    v = validator(resource["resourceType"])
    return [
        f"{resource['resourceType']}/{resource.get('id')}: {'/'.join(map(str, e.path))} "
        f"{e.message[:200]}"
        for e in v.iter_errors(resource)
    ]
