"""``Recent``: the bound of every memo."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from carelink.recent import Recent, same_objects

#: equal in pairs, never the same object: only identity tells them apart
POOL = [{"id": 1}, {"id": 1}, [1], [1], "x", 1.5]


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


@given(st.lists(st.sampled_from(range(len(POOL)))), st.lists(st.sampled_from(range(len(POOL)))))
def test_same_objects_is_identity_item_by_item_never_equality(a, b):
    left, right = [POOL[i] for i in a], [POOL[i] for i in b]
    expected = len(a) == len(b) and all(POOL[i] is POOL[j] for i, j in zip(a, b, strict=False))
    assert same_objects(left, right) is expected
    assert same_objects(tuple(left), right) is expected
