"""``Recent``: the bound of every memo."""

from __future__ import annotations

from carelink.recent import Recent


def test_the_least_recently_used_goes_first_and_a_reused_entry_stays():
    memo: Recent[str, int] = Recent(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.used("a")  # reused: "b" is now the least recently used
    memo.put("c", 3)
    assert dict(memo) == {"a": 1, "c": 3}
    memo.put("a", 4)  # put again: the newest, the old value replaced
    memo.put("d", 5)
    assert list(memo.items()) == [("a", 4), ("d", 5)]
