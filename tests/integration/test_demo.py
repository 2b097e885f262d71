"""The README's first command: ``carelink demo`` brings the whole system up."""

from __future__ import annotations

import random
import re
import socket

import httpx

from tests.support.procs import free_port, running


def _free(port: int) -> bool:
    """Can a server bind ``port`` now (as the demo's own check does)? A port nobody
    listens on may still be the local end of someone's connection."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _four_free_ports() -> int:
    """Four consecutive bindable ports below the ephemeral range (32768 and up), where
    the system does not hand them to outgoing connections meanwhile."""
    rng = random.Random()
    while True:
        first = rng.randrange(20000, 32000)
        if all(_free(first + i) for i in range(4)):
            return first


def test_demo_starts_four_sources_builds_the_index_and_prints_working_requests(tmp_path):
    """Every printed request works with the printed token, and none without it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    args = [
        "demo",
        "--size",
        "150",
        "--port",
        str(port),
        "--source-port",
        str(_four_free_ports()),
        "--latency-ms",
        "1",
        "--database",
        str(tmp_path / "d.db"),
    ]
    with running(args, f"{base}/metadata", pipe=True) as proc:
        assert proc.stdout is not None
        banner = ""
        while "vital-signs" not in banner:
            banner += proc.stdout.readline().decode()
        urls = re.findall(r"curl (?:-H \"Authorization: Bearer \$TOKEN\" )?'([^']+)'", banner)
        token = re.search(r"export TOKEN=(\S+)", banner)
        assert len(urls) == 4
        assert token is not None
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        answers = [httpx.get(u, timeout=10, headers=headers) for u in urls]
        without = httpx.get(urls[1], timeout=10)
    assert "index built: 150 people" in banner
    assert [a.status_code for a in answers] == [200] * 4
    assert without.status_code == 401  # the demo is secured like production
    assert answers[1].json()["total"] == 1
    everything = answers[2].json()
    outcome = next(e["resource"] for e in everything["entry"] if e["search"]["mode"] == "outcome")
    assert len(outcome["issue"]) == 4
