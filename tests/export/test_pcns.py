"""Primary care network cohorts: the PCN list and how a group id resolves."""

from __future__ import annotations

import json

import pytest

from carelink.errors import ConfigError, NotFound
from carelink.export.spec import Cohort, load_pcns


def write(tmp_path, document):
    path = tmp_path / "pcns.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_a_pcn_group_resolves_to_its_member_practices(tmp_path):
    pcns = load_pcns(
        write(tmp_path, {"U12345": {"name": "North", "practices": ["B86001", "B86002"]}})
    )
    cohort = Cohort.from_group("pcn-U12345", pcns)
    assert cohort.practices == ("B86001", "B86002")
    assert cohort.holds("B86002")
    assert not cohort.holds("B86003")
    assert not cohort.holds(None)
    assert Cohort.from_group("practice-B86003").holds("B86003")


@pytest.mark.parametrize(
    ("group", "pcns", "message"),
    [
        ("pcn-U1", None, "no primary care networks are configured"),
        ("pcn-U1", {}, "no primary care networks are configured"),
        ("region-X", None, "groups are practice-"),
        ("practice-", None, "groups are practice-"),
    ],
)
def test_unknown_groups_are_not_found(group, pcns, message):
    with pytest.raises(NotFound, match=message):
        Cohort.from_group(group, pcns)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "is not JSON"),
        ([], "is an object"),
        ({"u-1": {"practices": ["B86001"]}}, "not an ODS code"),
        ({"U12345": {"practices": []}}, "non-empty list"),
        ({"U12345": {"practices": ["b 1"]}}, "'b 1' is not an ODS code"),
        ({"U12345": {"practices": ["B86001"], "colour": "red"}}, "name and practices only"),
        (
            {"U12345": {"practices": ["B86001"]}, "U12346": {"practices": ["B86001"]}},
            "already belongs to U12345",
        ),
    ],
)
def test_a_malformed_pcn_list_names_the_file_and_the_problem(tmp_path, document, message):
    path = write(tmp_path, document)
    with pytest.raises(ConfigError, match=message) as err:
        load_pcns(path)
    assert str(err.value).startswith(str(path))


def test_a_missing_pcn_list_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_pcns(tmp_path / "absent.json")
