"""Index linking: by NHS number, by demographics, review list, nothing lost."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelink.federation.index import link_people, person_id
from carelink.fhir.nhs import NHS_NUMBER_SYSTEM, is_valid
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
    nhs = [i for i in patient["identifier"] if i["system"] == NHS_NUMBER_SYSTEM]
    assert [i["value"] for i in nhs] == [p.nhs_number]
    assert nhs[0]["extension"][0]["url"].endswith("NHSNumberVerificationStatus")
    assert len(patient["link"]) == 2
    assert row.id == person_id(KEY, p.nhs_number, "") != p.nhs_number


# --- linkage that sees everyone ------------------------------------------------------

ALICE = {"given": "Alice", "family": "Wetherby", "birth": "1950-02-14", "postcode": "LS6 2AB"}
BOB = {"given": "Bob", "family": "Ng", "birth": "1987-06-01", "postcode": "BD7 1DP"}


def _rec(source: str, local: str, nhs: str | None = None, **demo: str) -> SourcePerson:
    d = {**ALICE, **demo}
    return SourcePerson(
        source,
        local,
        nhs,
        d["given"],
        d["family"],
        d["birth"],
        "female",
        d["postcode"] or None,
        None,
        {"resourceType": "Patient", "id": f"{source}-{local}"},
    )


def _partition(links) -> set[frozenset[tuple[str, str]]]:
    by: dict[str, set[tuple[str, str]]] = {}
    for lk in links:
        by.setdefault(lk.person_id, set()).add((lk.source, lk.local_id))
    return {frozenset(v) for v in by.values()}


VALID = [p.nhs_number for p in pop.people(3, 4)]


def _bad(nhs: str) -> str:
    return nhs[:-1] + str((int(nhs[-1]) + 1) % 10)


def test_people_without_nhs_numbers_at_any_source_link_with_each_other():
    by = {
        "acute": [_rec("acute", "A1"), _rec("acute", "A2", **BOB)],
        "gp": [_rec("gp", "G1", postcode=""), _rec("gp", "G2", **BOB)],
        "community": [_rec("community", "C1", family="Wetherbey")],
    }
    _, links, reviews, report = link_people(by, KEY)
    assert _partition(links) == {
        frozenset({("acute", "A1"), ("gp", "G1"), ("community", "C1")}),
        frozenset({("acute", "A2"), ("gp", "G2")}),
    }
    assert report.persons == 2
    assert report.by_demographics == 5
    assert {lk.method for lk in links} == {"demographic"}
    assert reviews == []


def test_a_record_without_a_number_joins_a_person_made_by_nhs_number_whatever_the_order():
    gp = [_rec("gp", "G1", VALID[0])]
    acute = [_rec("acute", "A1", VALID[0])]
    social = [_rec("social-care", "S1", given="Alicia")]
    for order in (("gp", "acute", "social-care"), ("social-care", "acute", "gp")):
        all_ = {"gp": gp, "acute": acute, "social-care": social}
        _, links, _, report = link_people({s: all_[s] for s in order}, KEY)
        assert report.persons == 1
        assert {lk.person_id for lk in links} == {person_id(KEY, VALID[0], "")}


def test_a_bad_check_digit_is_reported_by_source_and_local_id_and_never_links():
    bad = _bad(VALID[0])
    by = {
        "acute": [_rec("acute", "A1", bad)],
        "gp": [_rec("gp", "G1", bad, given="Zebedee", family="Quux", birth="1999-09-09")],
    }
    persons, _links, _, report = link_people(by, KEY)
    assert report.invalid_nhs_numbers == 2
    assert sorted(report.invalid_nhs_records) == [("acute", "A1"), ("gp", "G1")]
    assert report.persons == 2
    assert all(r.nhs_number is None for r in persons)
    assert all(bad not in r.patient.decode() for r in persons)


def test_a_demographic_match_never_merges_two_different_valid_nhs_numbers():
    by = {
        "gp": [_rec("gp", "G1", VALID[0])],
        "acute": [_rec("acute", "A1", VALID[1])],
        "community": [_rec("community", "C1")],
    }
    persons, _links, reviews, report = link_people(by, KEY)
    assert report.persons == 2
    assert {r.nhs_number for r in persons} == {VALID[0], VALID[1]}
    # the record without a number joins one of them; the other match is for review
    assert len(reviews) == 1
    assert "different NHS numbers" in reviews[0].explanation
    assert report.kept_apart_nhs_number == 1


def test_two_lookalike_records_at_one_source_are_sent_to_review_not_merged():
    by = {"acute": [_rec("acute", "A1"), _rec("acute", "A2", postcode="LS6 2AD")]}
    _, _links, reviews, report = link_people(by, KEY)
    assert report.persons == 2
    assert [(r.source, r.local_id) for r in reviews] == [("acute", "A1")]
    assert "same source" in reviews[0].explanation
    assert "birth_date=exact" in reviews[0].explanation
    assert report.kept_apart_same_source == 1


def test_one_source_holding_one_nhs_number_twice_is_still_one_person():
    by = {"gp": [_rec("gp", "G1", VALID[0]), _rec("gp", "G2", VALID[0], given="Al")]}
    _, _, reviews, report = link_people(by, KEY)
    assert report.persons == 1
    assert reviews == []


def _messy_population() -> dict[str, list[SourcePerson]]:
    """Every hard case at once: missing and bad numbers, variants, duplicates, strangers."""
    by, people = _sources(400, seed=11)
    by["acute"] = []
    for n, p in enumerate(people[:150]):
        nhs = None if n % 3 == 0 else _bad(p.nhs_number) if n % 7 == 0 else p.nhs_number
        by["acute"].append(
            _sp(
                "acute",
                p,
                nhs=nhs,
                given=p.given if n % 4 else p.given[:3],
                family=p.family,
                postcode="" if n % 5 == 0 else p.postcode,
                birth=p.birth_date.isoformat(),
            )
        )
    twin = by["acute"][0]
    by["acute"].append(SourcePerson(**{**vars(twin), "local_id": "A-DUP", "nhs_number": None}))
    by["gp"].append(SourcePerson(**{**vars(by["gp"][1]), "local_id": "G-DUP", "nhs_number": None}))
    return by


MESSY = _messy_population()
MESSY_RESULT = link_people(MESSY, KEY)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_the_same_people_come_out_whatever_order_sources_and_records_are_read_in(rnd):
    sources = list(MESSY)
    rnd.shuffle(sources)
    shuffled = {s: rnd.sample(MESSY[s], len(MESSY[s])) for s in sources}
    persons, links, reviews, report = link_people(shuffled, KEY)
    want_persons, want_links, want_reviews, want_report = MESSY_RESULT
    assert sorted(links, key=lambda lk: (lk.source, lk.local_id)) == sorted(
        want_links, key=lambda lk: (lk.source, lk.local_id)
    )
    assert sorted(p.id for p in persons) == sorted(p.id for p in want_persons)
    assert sorted(reviews, key=repr) == sorted(want_reviews, key=repr)
    assert report == want_report


def test_the_messy_population_keeps_numbers_apart_and_duplicates_for_review():
    persons, links, reviews, report = MESSY_RESULT
    owner = {(lk.source, lk.local_id): lk.person_id for lk in links}
    numbers: dict[str, set[str]] = {}
    for source, records in MESSY.items():
        for r in records:
            if r.nhs_number and is_valid(r.nhs_number):
                numbers.setdefault(owner[(source, r.local_id)], set()).add(r.nhs_number)
    assert all(len(v) == 1 for v in numbers.values())
    assert report.invalid_nhs_numbers == len(report.invalid_nhs_records) > 0
    assert report.by_demographics > 0
    pairs = {frozenset({owner[(r.source, r.local_id)], r.candidate_id}) for r in reviews}
    twin = MESSY["acute"][0]
    gp_one = MESSY["gp"][1]
    assert frozenset({owner[("acute", "A-DUP")], owner[("acute", twin.local_id)]}) in pairs
    assert frozenset({owner[("gp", "G-DUP")], owner[("gp", gp_one.local_id)]}) in pairs
    assert len(persons) == len({owner[k] for k in owner})
