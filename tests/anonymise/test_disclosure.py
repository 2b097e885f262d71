"""Disclosure control: k-anonymity by generalising then suppressing, l-diversity,
the risk report, and NHS England's small-number rule."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carelink.anonymise.disclosure import (
    Refused,
    Thresholds,
    age_band,
    postcode_level,
    protect,
    recheck,
    small_numbers,
    suppress_table,
)


def people(n: int, seed: int = 0) -> pd.DataFrame:
    import random

    rng = random.Random(seed)
    districts = ["LS1", "LS2", "LS6", "WF1", "BD3"]
    return pd.DataFrame(
        {
            "age": [rng.randint(0, 99) for _ in range(n)],
            "sex": [rng.choice("MF") for _ in range(n)],
            "postcode": [f"{rng.choice(districts)} {rng.randint(1, 9)}AB" for _ in range(n)],
            "diagnosis": [rng.choice(["asthma", "diabetes", "copd"]) for _ in range(n)],
        }
    )


def test_generalisation_hierarchies():
    assert [age_band(37, lvl) for lvl in range(5)] == [37, "35-39", "30-39", "20-39", "0-89"]
    assert age_band(93, 0) == "90+"
    assert [postcode_level("ls6 2ab", lvl) for lvl in range(4)] == ["LS6 2", "LS6", "LS", None]


def test_k_anonymity_holds_in_what_is_released_and_the_report_says_so():
    df = people(2000)
    released, report = protect(df, ["age", "sex", "postcode"], Thresholds(k=5, max_suppressed=0.05))
    sizes = released.groupby(["age", "sex", "postcode"], dropna=False).size()
    assert sizes.min() >= 5
    assert report.smallest_class == sizes.min()
    assert report.records_out == len(released) == 2000 - report.suppressed
    assert report.suppressed <= 0.05 * 2000
    assert report.prosecutor_max == pytest.approx(1 / sizes.min())
    assert report.marketer == pytest.approx(len(sizes) / len(released))
    assert report.met
    assert report.levels["age"] > 0  # exact ages could not be released
    assert "Thresholds met" in report.summary()


def test_an_extract_that_cannot_meet_k_is_refused_not_shipped():
    df = people(30)
    with pytest.raises(Refused) as err:
        protect(df, ["sex", "diagnosis"], Thresholds(k=50, max_suppressed=0.0))
    assert not err.value.report.met
    assert "REFUSED" in err.value.report.summary()


def test_k_is_checked_again_over_what_consent_let_through():
    qis = ["age", "sex", "postcode"]
    df = people(2000).assign(id=range(2000))
    t = Thresholds(k=5, max_suppressed=0.05)
    released, report = protect(df, qis, t)
    planned = df[df["id"].isin(released["id"])]
    again = recheck(planned, qis, t, report.levels, report.suppressed)
    assert (again.met, again.smallest_class) == (True, report.smallest_class)
    assert (again.records_in, again.suppressed) == (report.records_in, report.suppressed)
    # Consent withholds all but one member of one class: that person would stand alone.
    sizes = released.groupby(qis, dropna=False)["id"].transform("size")
    members = released[sizes == sizes.min()]
    key = members.iloc[0][qis]
    same = members[(members[qis] == key).all(axis=1)]["id"].tolist()
    fewer = planned[~planned["id"].isin(same[1:])]
    with pytest.raises(Refused) as err:
        recheck(fewer, qis, t, report.levels, report.suppressed)
    assert err.value.report.smallest_class == 1
    assert "below k" in err.value.report.summary()


def test_people_consent_withheld_are_neither_suppressed_nor_counted_in():
    qis = ["sex"]
    df = pd.DataFrame({"sex": ["F"] * 100, "id": range(100)})
    t = Thresholds(k=5, max_suppressed=0.1)
    _, report = protect(df, qis, t)
    after = recheck(df.iloc[11:], qis, t, report.levels, report.suppressed)  # 11 objected
    assert after.met
    assert (after.records_in, after.suppressed, after.records_out) == (89, 0, 89)


def test_counts_of_people_not_in_the_extract_follow_the_small_number_rule():
    df = pd.DataFrame({"sex": ["F"] * 3, "id": range(3)})
    with pytest.raises(Refused) as err:
        protect(df, ["sex"], Thresholds(k=5, max_suppressed=0.0))
    shown = err.value.report.as_json()
    # What is not released is published once, under the rule, and never beside a total
    # that includes it (records in minus records out would give it back).
    assert shown["suppressed"] == "*"
    assert "records_in" not in shown
    summary = err.value.report.summary()
    assert "0 people released (* suppressed)" in summary
    assert "3" not in summary.split("\n")[0]


def test_l_diversity_is_checked_on_the_sensitive_column():
    df = pd.DataFrame(
        {"sex": ["M"] * 10 + ["F"] * 10, "diagnosis": ["asthma"] * 10 + ["asthma", "copd"] * 5}
    )
    with pytest.raises(Refused, match="l-diversity"):
        protect(df, ["sex"], Thresholds(k=5, l_diversity=2, sensitive="diagnosis"))
    mixed = pd.DataFrame(
        {"sex": ["M", "F"] * 10, "diagnosis": ["asthma", "copd", "copd", "asthma"] * 5}
    )
    _, report = protect(mixed, ["sex"], Thresholds(k=5, l_diversity=2, sensitive="diagnosis"))
    assert report.l_smallest == 2


def test_journalist_risk_uses_the_population_when_given():
    sample = people(400, seed=1)
    population = pd.concat([sample, people(4000, seed=2)])
    _, alone = protect(sample, ["sex", "postcode"], Thresholds(k=3))
    _, with_pop = protect(sample, ["sex", "postcode"], Thresholds(k=3), population=population)
    assert with_pop.journalist_max < alone.journalist_max


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0"), (1, "*"), (7, "*"), (8, "10"), (12, "10"), (13, "15"), (100, "100"), (1234, "1235")],
)
def test_small_numbers(count, shown):
    assert small_numbers(count) == shown


@given(st.integers(min_value=8, max_value=10**6))
def test_published_counts_are_multiples_of_five_within_two(count):
    shown = int(small_numbers(count))
    assert shown % 5 == 0
    assert abs(shown - count) <= 2


def test_an_aggregate_table_is_made_safe():
    table = pd.DataFrame({"practice": ["A", "B", "C"], "patients": [0, 3, 48]})
    assert suppress_table(table, ["patients"])["patients"].tolist() == ["0", "*", "50"]
