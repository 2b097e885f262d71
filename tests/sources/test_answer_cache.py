"""The answer cache: reuse on identical bytes, LRU bound, and no growth in a bulk read."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from carelink.sources.answer_cache import AnswerCache, digest
from carelink.sources.base import bulk_read
from carelink.sources.http import Mapped, answer


def test_reuses_only_identical_bytes() -> None:
    cache = AnswerCache()
    key = ("a-1", "Patient/p1", None)
    cache.put(key, b"one", [{"id": "x"}])
    # equal bytes in another object are the same answer; a different body is not
    assert cache.get(key, bytes(bytearray(b"one"))) == ({"id": "x"},)
    assert cache.get(key, b"two") is None


@given(st.binary(min_size=1, max_size=64), st.data())
def test_a_body_differing_anywhere_is_not_reused(body: bytes, data: st.DataObject) -> None:
    """Whatever byte differs (same length, so no shortcut decides it), the cache misses."""
    at = data.draw(st.integers(0, len(body) - 1))
    other = bytearray(body)
    other[at] ^= data.draw(st.integers(1, 255))
    cache = AnswerCache()
    key = ("a-1", "Patient/p1", None)
    cache.put(key, body, [{"id": "x"}])
    assert cache.get(key, bytes(other)) is None
    assert cache.get(key, bytes(body)) == ({"id": "x"},)


def test_an_answer_without_an_etag_keeps_its_version_when_reused() -> None:
    """A source that sends no ETag is versioned by its body: the same on a hit as on the
    miss that made it, and different for different bytes."""
    cache = AnswerCache()
    key = ("a-1", "Patient/p1", None)
    built: list[bytes] = []

    def build(data: bytes) -> Mapped:
        built.append(data)
        return Mapped([{"id": data.decode()}])

    first = answer(cache, key, b"body-1", {}, build)
    again = answer(cache, key, bytes(bytearray(b"body-1")), {}, build)
    other = answer(cache, key, b"body-2", {}, build)
    assert built == [b"body-1", b"body-2"]  # the second answer was reused, not built
    assert first.version == again.version == digest(b"body-1").hex()
    assert other.version == digest(b"body-2").hex() != first.version
    tagged = answer(cache, key, b"body-2", {"ETag": 'W/"7"'}, build)
    assert tagged.version == 'W/"7"'


def test_the_answer_that_made_an_entry_and_every_reuse_hand_on_the_very_same_object() -> None:
    """So the fan-out's results and the record's memo see "the same answer as last time"
    by identity (``recent.same_objects``), without walking the resources."""
    cache = AnswerCache()
    key = ("a-1", "Patient/p1", None)

    def build(data: bytes) -> Mapped:
        return Mapped([{"id": "r1"}, {"id": "r2"}])

    first = answer(cache, key, b"body", {}, build)
    again = answer(cache, key, bytes(bytearray(b"body")), {}, build)
    assert isinstance(first.resources, tuple)
    assert again.resources is first.resources
    assert cache.get(key, b"body") is first.resources
    # in a bulk read nothing is remembered, but the answer is the same either way
    with bulk_read():
        cold = answer(cache, ("a-2", "Patient/p2", None), b"body", {}, build)
    assert cold.resources == ({"id": "r1"}, {"id": "r2"})
    assert cache.get(("a-2", "Patient/p2", None), b"body") is None


def test_least_recently_used_goes_first() -> None:
    cache = AnswerCache(maxsize=2)
    for i in range(3):
        cache.put((str(i), "", None), b"x", [])
    assert len(cache) == 2
    assert cache.get(("0", "", None), b"x") is None
    assert cache.get(("2", "", None), b"x") == ()


def test_bulk_read_adds_nothing_but_still_reuses() -> None:
    cache = AnswerCache()
    warm = ("warm", "", None)
    cache.put(warm, b"w", [{"id": "w"}])

    async def scan() -> list[object]:
        with bulk_read():
            # Tasks started inside the block (the fan-out's) inherit it.
            await asyncio.create_task(_put(cache, ("cold", "", None)))
            return [cache.get(warm, b"w")]

    assert asyncio.run(scan()) == [({"id": "w"},)]
    assert len(cache) == 1
    cache.put(("after", "", None), b"a", [])  # outside the block it remembers again
    assert len(cache) == 2


async def _put(cache: AnswerCache, key: tuple[str, str, None]) -> None:
    cache.put(key, b"c", [{"id": "c"}])
