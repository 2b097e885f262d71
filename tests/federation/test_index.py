"""Index linking: by NHS number, by demographics, review list, nothing lost."""

from __future__ import annotations

from carelink.federation.index import link_people, person_id
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from carelink.simulators import population as pop
from carelink.sources.base import SourcePerson

KEY = b"k" * 32


def _sp(
    source: str,
    p: pop.Person,
    *,
    nhs: str | None,
    given: str,
    family: str,
    postcode: str,
    birth: str,
) -> SourcePerson:
    return SourcePerson(
        source,
        pop.local_id(source, p.index),
        nhs,
        given,
        family,
        birth,
        p.gender,
        postcode,
        None,
        {
            "resourceType": "Patient",
            "id": f"{source}-x{p.index}",
            "name": [{"family": family, "given": [given]}],
        },
    )


def _sources(size: int = 3000, seed: int = 8) -> tuple[dict[str, list[SourcePerson]], list]:
    people = list(pop.people(seed, size))
    by: dict[str, list[SourcePerson]] = {"gp": [], "social-care": []}
    for p in people:
        by["gp"].append(
            _sp(
                "gp",
                p,
                nhs=p.nhs_number,
                given=p.given,
                family=p.family,
                postcode=p.postcode,
                birth=p.birth_date.isoformat(),
            )
        )
        if "social-care" in p.sources:
            d = pop.social_demographics(p)
            by["social-care"].append(
                _sp(
                    "social-care",
                    p,
                    nhs=d["nhs_number"],
                    given=str(d["given"]),
                    family=str(d["family"]),
                    postcode=str(d["postcode"]),
                    birth=str(d["birth_date"]),
                )
            )
    return by, people


def test_records_with_and_without_nhs_numbers_link_to_the_right_person():
    by, people = _sources()
    _persons, links, reviews, report = link_people(by, KEY)
    assert report.persons == len(people)
    owner = {(lk.source, lk.local_id): lk.person_id for lk in links}
    for p in people:
        if "social-care" in p.sources:
            expected = person_id(KEY, p.nhs_number, "")
            assert owner[("social-care", pop.local_id("social-care", p.index))] == expected
    assert report.by_demographics == sum(1 for p in people if p.social_variant)
    assert report.unmatched == 0
    assert reviews == []


def test_an_unmatchable_record_is_kept_as_its_own_person_not_dropped():
    by, people = _sources(500)
    stranger = people[0]
    by["social-care"].append(
        _sp(
            "social-care",
            stranger,
            nhs=None,
            given="Zebedee",
            family="Quux",
            postcode="ZZ9 9ZZ",
            birth="1900-01-01",
        )
    )
    by["social-care"][-1] = SourcePerson(**{**vars(by["social-care"][-1]), "local_id": "SC-NEW"})
    _persons, links, _, report = link_people(by, KEY)
    assert report.unmatched == 1
    assert any(lk.local_id == "SC-NEW" and lk.method == "unmatched" for lk in links)
    assert report.persons == len(people) + 1


def test_a_near_miss_goes_to_the_review_list_with_an_explanation():
    by, people = _sources(500)
    p = people[3]
    near = _sp(
        "social-care",
        p,
        nhs=None,
        given=p.given,
        family="Zzzz",
        postcode="ZZ9 9ZZ",
        birth=p.birth_date.isoformat(),
    )
    by["social-care"].append(SourcePerson(**{**vars(near), "local_id": "SC-NEAR"}))
    _, _links, reviews, _report = link_people(by, KEY)
    assert [r.local_id for r in reviews] == ["SC-NEAR"]
    assert "birth_date=exact" in reviews[0].explanation
    assert reviews[0].candidate_id == person_id(KEY, p.nhs_number, "")


def test_an_invalid_nhs_number_is_not_trusted_for_linking():
    by, people = _sources(200)
    p = people[5]
    bad = p.nhs_number[:-1] + str((int(p.nhs_number[-1]) + 1) % 10)
    rec = _sp(
        "social-care",
        p,
        nhs=bad,
        given=p.given,
        family=p.family,
        postcode=p.postcode,
        birth=p.birth_date.isoformat(),
    )
    by["social-care"].append(SourcePerson(**{**vars(rec), "local_id": "SC-BAD"}))
    _, links, _, report = link_people(by, KEY)
    assert report.invalid_nhs_numbers == 1
    link = next(lk for lk in links if lk.local_id == "SC-BAD")
    assert link.method == "demographic"
    assert link.person_id == person_id(KEY, p.nhs_number, "")


def test_merged_patient_carries_nhs_number_every_local_id_and_links():
    import orjson

    by, people = _sources(300)
    persons, *_ = link_people(by, KEY)
    p = next(x for x in people if "social-care" in x.sources)
    row = next(r for r in persons if r.nhs_number == p.nhs_number)
    patient = orjson.loads(row.patient)
    assert {"system": NHS_NUMBER_SYSTEM, "value": p.nhs_number} in patient["identifier"]
    assert len(patient["link"]) == 2
    assert row.id == person_id(KEY, p.nhs_number, "") != p.nhs_number
