"""PostgreSQL connections cut under the lookup and the search, with people we did not make.

Invariant: while its database connections are cut mid-request (``storage/hot.py``'s
kept per-thread connections, ``IndexStore.find_with_consents``), a gateway answers
each lookup and search with 503 or with exactly the answer it gives with the database
up, for that person and the consents in force when the request was sent: never
another person's answer, never one from before a consent changed; and once the
database is back it answers correctly again by itself.

Three people of the vendored Synthea export (two given NHS numbers, as a trust would
add them) at a FHIR source over real HTTP; the index on PostgreSQL, which the gateway
reads through a TCP proxy the test cuts; a privacy officer withdraws and restores an
objection between rounds of cuts.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from carelink.fhir.nhs import NHS_NUMBER_SYSTEM
from tests.support.changing_fhir import ChangingFhir, built_env
from tests.support.consents import privacy_consent, sent_consent
from tests.support.gateways import person_id, token_gateways
from tests.support.procs import carelink, own_files
from tests.support.servers import run_app
from tests.support.shared import SYNTHEA
from tests.support.tcp_proxy import proxy_to
from tests.support.tokens import Issuer

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not SYNTHEA.exists(), reason="the Synthea sample is not present"),
]

LOCAL_SYSTEM = "https://carelink.example/Id/acute"
NUMBERS = ("9434765919", "9434765870")  # check digits right
ROUNDS = 2  # the objection withdrawn, then in force again
CUTS = 2  # connection cuts a round


def _matches(r: httpx.Response) -> tuple[int, Any]:
    """What a search answer shows: its status, and its total and Patients when 200."""
    if r.status_code != 200:
        return r.status_code, None
    body = r.json()
    shown = sorted(orjson.dumps(e["resource"], option=orjson.OPT_SORT_KEYS) for e in body["entry"])
    return 200, (body["total"], shown)


def test_cut_connections_answer_503_or_the_right_person_with_current_consent(
    postgres_url, tmp_path
):
    source = ChangingFhir(SYNTHEA, 3)
    locals_ = list(source.records)
    for local, number in zip(locals_, NUMBERS, strict=False):
        ident = {"system": NHS_NUMBER_SYSTEM, "value": number}
        source.records[local][0].setdefault("identifier", []).append(ident)
    issuer = Issuer()
    with ExitStack() as stack:
        url = stack.enter_context(run_app(source.app))
        # keys and exports in files shared by A and B
        env = {**built_env(postgres_url, f"acute={url}"), **own_files(tmp_path / "files")}
        built = carelink(["index", "build"], env)
        assert built.returncode == 0, built.stderr
        db = sa.engine.make_url(postgres_url)
        proxy = stack.enter_context(proxy_to(db.host or "127.0.0.1", db.port or 5432))
        cut = db.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        (tmp_path / "b").mkdir()
        (b,) = stack.enter_context(
            token_gateways(
                env,
                tmp_path / "x.db",
                issuer,
                tmp_path / "b",
                extra={
                    "CARELINK_DATABASE_URL": cut,
                    "CARELINK_DB_TIMEOUT": "1",
                    "CARELINK_DB_CONNECT_TIMEOUT": "1",
                },
            )
        )
        patients = {loc: source.records[loc][0] for loc in locals_}

        asks: list[tuple[str, dict[str, str]]] = [
            *((f"lookup {n}", {"identifier": f"{NHS_NUMBER_SYSTEM}|{n}"}) for n in NUMBERS),
            *((f"local {loc}", {"identifier": f"{LOCAL_SYSTEM}|{loc}"}) for loc in locals_),
            *(
                (
                    f"name {loc}",
                    {"family": p["name"][0]["family"], "birthdate": p["birthDate"]},
                )
                for loc, p in patients.items()
            ),
        ]

        def ask(params: dict[str, str]) -> httpx.Response:
            token = issuer.token(aud=b.base)
            return httpx.get(
                f"{b.base}/Patient",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )

        ready = time.monotonic() + 30  # B's first connections, on a loaded machine
        while _matches(ask({"identifier": f"{NHS_NUMBER_SYSTEM}|{NUMBERS[1]}"}))[0] != 200:
            assert time.monotonic() < ready, "gateway B never answered"
            time.sleep(0.3)
        objector = person_id(b.base, f"{NHS_NUMBER_SYSTEM}|{NUMBERS[1]}", issuer.token(aud=b.base))

        def officer(body: dict[str, Any], cid: str | None = None) -> httpx.Response:
            token = issuer.token(aud=b.base, role="R0001", scope="user/*.cruds")
            return sent_consent(b.base, token, body, cid)

        def answers() -> dict[str, tuple[int, Any]]:
            return {name: _matches(ask(params)) for name, params in asks}

        # the answers with the database up, without and with the objection
        expected = {"open": answers()}
        consent = privacy_consent(objector, {"type": "deny"})
        stored = officer(consent)
        assert stored.status_code == 201, stored.text
        cid = stored.json()["id"]
        expected["objected"] = answers()
        assert expected["objected"] != expected["open"]
        assert all(status == 200 for status, _ in expected["objected"].values())
        state = "objected"

        def change(to: str) -> None:
            body = {**consent, "status": "active" if to == "objected" else "inactive"}
            assert officer(body, cid).status_code == 200

        for _ in range(ROUNDS):
            state = "open" if state == "objected" else "objected"
            change(state)  # between the cuts, through B itself
            seen: list[tuple[str, tuple[int, Any]]] = []
            stop = threading.Event()

            def asking(
                offset: int, seen: list[tuple[str, tuple[int, Any]]], stop: threading.Event
            ) -> None:
                i = offset
                while not stop.is_set():
                    name, params = asks[i % len(asks)]
                    seen.append((name, _matches(ask(params))))
                    i += 1

            threads = [threading.Thread(target=asking, args=(k, seen, stop)) for k in range(3)]
            for t in threads:
                t.start()
            try:
                for _ in range(CUTS):
                    time.sleep(0.4)
                    proxy.kill()  # every connection cut, whatever it was doing
                    time.sleep(0.6)
                    proxy.resume()
                time.sleep(0.5)
            finally:
                proxy.resume()
                stop.set()
                for t in threads:
                    t.join(60)
            for name, got in seen:
                assert got[0] in (200, 503), (name, got, b.errors())
                if got[0] == 200:
                    assert got == expected[state][name], (name, state)
            assert any(got[0] == 503 for _, got in seen), "no request met a cut"
            # back by itself: every question answered right
            deadline = time.monotonic() + 15
            while (now := answers()) != expected[state]:
                assert time.monotonic() < deadline, f"not recovered: {now}"
                time.sleep(0.3)
        change("open")
