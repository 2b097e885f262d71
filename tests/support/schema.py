"""Validation against the official FHIR R4 JSON schema (vendored in tests/data/fhir)."""

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
    """What is wrong with a resource, one line per problem; empty when it is valid R4.

    A Bundle's entries are validated one by one against their own type: the schema's
    ``ResourceList`` is a ``oneOf`` over every resource type, which makes validating a
    whole Bundle in one go take minutes and report only "not valid under any".
    """
    if resource.get("resourceType") == "Bundle" and resource.get("entry"):
        shell = dict(resource)
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} for e in resource["entry"]
        ]
        out = _problems(shell)
        for e in resource["entry"]:
            if "resource" in e:
                out += problems(e["resource"])
        return out
    return _problems(resource)


def _problems(resource: dict) -> list[str]:
    v = validator(resource["resourceType"])
    return [
        f"{resource['resourceType']}/{resource.get('id')}: {'/'.join(map(str, e.path))} "
        f"{e.message[:200]}"
        for e in v.iter_errors(resource)
    ]
