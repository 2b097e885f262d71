"""A plain person found by a search is shown as stored, never parsed: the same answer.

``PersonRow.plain`` says, from when the row was written, that a person's merged Patient
is the Patient of their id and carries nothing a consent policy finds a sensitive
category by (``consent.policy.unmarked``). A search then shows such a person who holds
no Consents as the stored bytes (``patient_routes._shown_batch``), when the caller's
scopes pass every Patient and consent shows unmarked data to the caller as it is. The
guarantee: for any caller, search, person and consent situation, the answer and its
audit events are those of the full path, where every person is parsed and decided
about. Each search is asked twice of one gateway (on SQLite and on PostgreSQL), with the
index as built (its people plain) and with every person marked not plain (``UPDATE
persons SET plain = 0``): the
two answers must have the same status, headers (but the date and request id) and body,
byte for byte, and leave the same audit events (but ids, times and request ids).

Callers are drawn as ``test_lookup_path`` draws them, with scopes that do and do not
filter Patients; searches by family and birth date, by a year's range, with
``_elements``, ``_summary=count`` and paging; a person with or without an objection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import System
from tests.support.gateways import BOTH_DATABASES, IndexDatabase, token_gateways
from tests.support.objections import Gateway, same_answers
from tests.support.tokens import Issuer

CALLERS = ["gp", "stranger", "officer", "secondary", "own-patient", "other-patient"]
SCOPES = [
    "user/*.rs",
    "user/*.cruds",
    "user/Patient.rs",
    "user/Patient.rs?gender=female",
    "user/Patient.rs?gender=male",
    "user/Condition.rs",
]
FORMS = ["day", "year", "year+given", "elements", "count", "page"]


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def gateway(
    request: pytest.FixtureRequest, system: System, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp(f"plain-{request.param}")
    issuer = Issuer()
    chosen = [p for p in system.population if "gp" in p.sources and not p.social_variant]
    with ExitStack() as stack:
        url = stack.enter_context(IndexDatabase(request.param, system, tmp))
        extra = {"CARELINK_DATABASE_URL": url}
        [started] = stack.enter_context(
            token_gateways(system.env, tmp / "unused.db", issuer, tmp, extra=extra)
        )
        gateway = Gateway(started.base, issuer, chosen[:30], url)
        try:
            yield gateway
        finally:
            gateway.close()


def _built(gateway: Gateway) -> list[tuple[int, str]]:
    """Each person's ``plain`` as the build wrote it, and their id."""
    with gateway.database().engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, plain FROM persons"))
        return [(int(p), str(i)) for i, p in rows]


def _set(gateway: Gateway, flags: list[tuple[int, str]]) -> None:
    with gateway.database().engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE persons SET plain = :plain WHERE id = :id"),
            [{"plain": bool(p), "id": i} for p, i in flags],
        )


def _query(form: str, family: str, given: str, birth: str) -> dict[str, str | list[str]]:
    year = birth[:4]
    years = [f"ge{year}-01-01", f"le{year}-12-31"]
    return {
        "day": {"family": family, "birthdate": birth},
        "year": {"family": family[:1], "birthdate": years},
        "year+given": {"family": family, "given": given[:1], "birthdate": years},
        "elements": {"family": family[:1], "birthdate": years, "_elements": "name,gender"},
        "count": {"family": family[:1], "birthdate": years, "_summary": "count"},
        "page": {"family": family[:1], "birthdate": years, "_count": "1", "_offset": "1"},
    }[form]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.sampled_from(CALLERS),
    scope=st.sampled_from(SCOPES),
    index=st.integers(0, 29),
    other=st.integers(0, 29),
    objection=st.booleans(),
    form=st.sampled_from(FORMS),
)
def test_a_plain_person_is_shown_and_audited_as_the_full_path_shows_them(
    gateway: Gateway,
    who: str,
    scope: str,
    index: int,
    other: int,
    objection: bool,
    form: str,
) -> None:
    person = gateway.people[index]
    if objection:
        gateway.object(person)
    claims = gateway.caller(who, scope, person, gateway.people[other])
    token = gateway.token(**claims)
    params = _query(form, person.family, person.given, person.birth_date.isoformat())

    built = _built(gateway)
    assert any(p for p, _ in built), "the index as built has plain people"
    answers = []
    for flags in (built, [(0, i) for _, i in built]):
        try:
            _set(gateway, flags)
            answers.append(gateway.asked("/Patient", {"Authorization": f"Bearer {token}"}, params))
        finally:
            _set(gateway, built)
    spliced, parsed = answers
    same_answers(spliced, parsed)


def test_the_people_of_the_index_are_plain_as_built(gateway: Gateway) -> None:
    """The comparison above means something only if the index as built holds plain
    people (their Patients carry no security label nor code) and a search returns them."""
    built = {i: p for p, i in _built(gateway)}
    person = gateway.people[0]
    assert built[gateway.pid(person)] == 1
    gp = gateway.token(organisation=person.gp_ods, sub=f"gp-{person.gp_ods}")
    r = gateway.get(
        "/Patient", gp, {"family": person.family, "birthdate": person.birth_date.isoformat()}
    )
    assert r.status_code == 200
    assert gateway.pid(person) in {e["resource"]["id"] for e in r.json()["entry"]}
