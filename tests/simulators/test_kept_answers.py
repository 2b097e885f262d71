"""Answers a simulator keeps (``ResponseCache``) are answered by ``KeptFirst`` ahead of
the framework: the same bytes and headers as a fresh answer, with the same latency and
faults, drawn from the same ``Behaviour`` in the same order.

Each simulator runs under uvicorn on a loopback port and is asked over real HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from carelink.simulators import acute, community, social_care
from carelink.simulators.base import Behaviour
from carelink.simulators.population import local_id, people
from tests.support.servers import run_app

SEED = 42
SIZE = 60
#: headers that say when, not what
TIMES = {"date", "last-modified"}

App = Callable[..., Any]


def _first(source: str) -> str:
    return next(local_id(source, p.index) for p in people(SEED, SIZE) if source in p.sources)


CASES = {
    "acute": (acute.create_app, lambda: f"/fhir/Patient/{_first('acute')}/$everything"),
    "community": (community.create_app, lambda: f"/hl7/record?pid={_first('community')}"),
    "social-care": (
        social_care.create_app,
        lambda: f"/api/v2/persons/{_first('social-care')}/case",
    ),
}


@pytest.fixture(params=sorted(CASES))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Behaviour, httpx.Client, str]]:
    make, path = CASES[request.param]
    behaviour = Behaviour(rng=random.Random(3))
    app = make(seed=SEED, size=SIZE, behaviour=behaviour)
    with run_app(app) as url, httpx.Client(base_url=url) as client:
        yield behaviour, client, path()


def _what(resp: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (names in order, values but the times) and body."""
    heads = [(k, "" if k in TIMES else v) for k, v in resp.headers.multi_items()]
    return resp.status_code, heads, resp.content


def test_a_kept_answer_is_the_fresh_one(served: tuple[Behaviour, httpx.Client, str]) -> None:
    _, client, path = served
    fresh = client.get(path)
    assert fresh.status_code == 200
    kept = [client.get(path) for _ in range(3)]
    assert all(_what(k) == _what(fresh) for k in kept)
    assert all("last-modified" in k.headers for k in kept)


def test_kept_answers_keep_the_faults_in_their_order(
    served: tuple[Behaviour, httpx.Client, str],
) -> None:
    """With errors and malformed payloads drawn at random, the kept route answers each
    request as a replay of the same random draws says it must (no latency: one draw for
    a hang, one for the fault)."""
    behaviour, client, path = served
    assert client.get(path).status_code == 200  # kept from here on
    behaviour.error_rate, behaviour.malformed_rate = 0.3, 0.3
    behaviour.rng = random.Random(11)
    replay = random.Random(11)
    got, expected = [], []
    for _ in range(40):
        got.append(client.get(path).status_code)
        replay.random()  # the hang's draw
        roll = replay.random()
        expected.append(500 if roll < 0.3 else 200)
    assert got == expected
    assert 500 in got
    assert 200 in got


def test_a_kept_answer_is_malformed_when_drawn(
    served: tuple[Behaviour, httpx.Client, str],
) -> None:
    behaviour, client, path = served
    good = client.get(path)
    behaviour.malformed_rate = 1.0
    bad = client.get(path)
    assert bad.status_code == 200
    assert bad.content != good.content
    assert len(bad.content) < len(good.content)


def test_a_kept_answer_is_not_given_while_down(
    served: tuple[Behaviour, httpx.Client, str],
) -> None:
    behaviour, client, path = served
    assert client.get(path).status_code == 200
    behaviour.down = True
    assert client.get(path).status_code == 503
    behaviour.down = False
    assert client.get(path).status_code == 200
