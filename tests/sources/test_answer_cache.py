"""The answer cache: reuse on identical bytes, LRU bound, and no growth in a bulk read."""

from __future__ import annotations

import asyncio

from carelink.sources.answer_cache import AnswerCache, bulk_read, digest


def test_reuses_only_identical_bytes() -> None:
    cache = AnswerCache()
    key = ("a-1", "Patient/p1", None)
    cache.put(key, digest(b"one"), [{"id": "x"}])
    assert cache.get(key, digest(b"one")) == [{"id": "x"}]
    assert cache.get(key, digest(b"two")) is None


def test_least_recently_used_goes_first() -> None:
    cache = AnswerCache(maxsize=2)
    for i in range(3):
        cache.put((str(i), "", None), digest(b"x"), [])
    assert len(cache) == 2
    assert cache.get(("0", "", None), digest(b"x")) is None
    assert cache.get(("2", "", None), digest(b"x")) == []


def test_bulk_read_adds_nothing_but_still_reuses() -> None:
    cache = AnswerCache()
    warm = ("warm", "", None)
    cache.put(warm, digest(b"w"), [{"id": "w"}])

    async def scan() -> list[object]:
        with bulk_read():
            # Tasks started inside the block (the fan-out's) inherit it.
            await asyncio.create_task(_put(cache, ("cold", "", None)))
            return [cache.get(warm, digest(b"w"))]

    assert asyncio.run(scan()) == [[{"id": "w"}]]
    assert len(cache) == 1
    cache.put(("after", "", None), digest(b"a"), [])  # outside the block it remembers again
    assert len(cache) == 2


async def _put(cache: AnswerCache, key: tuple[str, str, None]) -> None:
    cache.put(key, digest(b"c"), [{"id": "c"}])
