"""The synthetic population: deterministic, valid and shaped like an ICS."""

from __future__ import annotations

import collections

import pytest

from carelink.fhir.nhs import is_valid
from carelink.simulators import clinical
from carelink.simulators import population as pop


def test_same_seed_same_people_other_seed_other_people():
    a = list(pop.people(3, 200))
    assert a == list(pop.people(3, 200))
    assert a != list(pop.people(4, 200))


def test_a_smaller_population_is_a_prefix_of_a_larger_one():
    assert list(pop.people(5, 50)) == list(pop.people(5, 120))[:50]


def test_nhs_numbers_are_unique_valid_and_in_the_reserved_test_range():
    numbers = [p.nhs_number for p in pop.people(11, 5000)]
    assert len(set(numbers)) == len(numbers)
    assert all(n.startswith("999") and is_valid(n) for n in numbers)


@pytest.mark.parametrize("size", [0, pop.MAX_SIZE + 1])
def test_size_outside_the_range_is_refused_with_the_reason(size):
    with pytest.raises(ValueError, match="reserved test range"):
        list(pop.people(1, size))


def test_everyone_has_a_gp_and_fewer_have_other_sources():
    people = list(pop.people(9, 4000))
    counts = collections.Counter(s for p in people for s in p.sources)
    assert counts["gp"] == 4000
    assert 0.35 < counts["acute"] / 4000 < 0.65
    assert 0.08 < counts["community"] / 4000 < 0.30
    assert 0.03 < counts["social-care"] / 4000 < 0.12
    social = [p for p in people if "social-care" in p.sources]
    missing = sum(1 for p in social if p.social_variant is not None)
    assert 0.1 < missing / len(social) < 0.3


def test_older_people_are_more_often_in_social_care():
    people = list(pop.people(9, 4000))

    def share(group):
        return sum("social-care" in p.sources for p in group) / max(1, len(group))

    assert share([p for p in people if p.age >= 80]) > 3 * share([p for p in people if p.age < 65])


def test_postcodes_have_a_uk_shape():
    import re

    shape = re.compile(r"^[A-Z]{2}\d{1,2} \d[ABDEFGHJLNPQRSTUWXYZ]{2}$")
    assert all(shape.match(p.postcode) for p in pop.people(2, 500))


def test_facts_are_deterministic_and_empty_where_the_person_is_not_known():
    person = next(p for p in pop.people(4, 300) if "acute" not in p.sources)
    assert clinical.facts(4, person, "acute") == []
    assert clinical.facts(4, person, "gp") == clinical.facts(4, person, "gp")


def test_sensitive_items_are_marked():
    people = list(pop.people(6, 3000))
    labels = {f.sensitivity for p in people for s in p.sources for f in clinical.facts(6, p, s)}
    assert {"PSY", "ETH", "STD", "SDV"} <= labels


def test_social_variants_hide_the_nhs_number_and_change_demographics():
    people = [p for p in pop.people(8, 6000) if p.social_variant]
    assert people
    for p in people:
        d = pop.social_demographics(p)
        assert d["nhs_number"] is None
        changed = (d["given"], d["family"], d["postcode"]) != (p.given, p.family, p.postcode)
        assert changed


def test_generate_streams_files(tmp_path):
    from carelink.simulators.export import generate

    summary = generate(60, 1, tmp_path)
    assert summary.startswith("60 people")
    lines = (tmp_path / "people.ndjson").read_bytes().splitlines()
    assert len(lines) == 60
    assert (tmp_path / "gp" / "records.ndjson").stat().st_size > 0
