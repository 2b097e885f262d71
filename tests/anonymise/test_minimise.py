"""Pseudonymised extracts are minimised: an element or type not on the list never leaves."""

from __future__ import annotations

import json
from pathlib import Path

from carelink.anonymise.engine import Anonymiser
from carelink.anonymise.keys import ProjectKeys
from carelink.anonymise.minimise import ALLOWED, minimise
from carelink.anonymise.rules import load

MASTER = b"m" * 32
PROFILE = Path(__file__).parents[2] / "consent" / "deid" / "pseudonymised.json"


def test_a_new_field_in_a_source_feed_never_reaches_a_project():
    engine = Anonymiser(load(PROFILE), ProjectKeys.for_project(MASTER, "p"))
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "onsetDateTime": "2019-05-06",
        "newFeedField": {"who": "Jane Doe", "phone": "07700 900123"},
        "text": {"status": "generated", "div": "<div>Jane Doe</div>"},
        "contained": [{"resourceType": "Practitioner", "id": "x", "name": [{"family": "Doe"}]}],
    }
    done = engine.apply(condition, person="pseudonym")
    assert done is not None
    kept = minimise(done)
    assert kept is not None
    assert set(kept) <= ALLOWED["Condition"] | {"resourceType", "id", "meta"}
    assert "Doe" not in json.dumps(kept)
    assert "07700" not in json.dumps(kept)
    assert kept["code"]["coding"][0]["code"] == "44054006"


def test_types_not_on_the_list_are_not_released():
    for rtype in ("DocumentReference", "Claim", "ExplanationOfBenefit", "Practitioner", "Device"):
        assert minimise({"resourceType": rtype, "id": "x"}) is None
    assert minimise({"resourceType": "Observation", "id": "o", "status": "final"}) is not None
