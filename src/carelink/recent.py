"""What was used last, at most a fixed number of entries: the bound of every memo.

The gateway remembers what it made while the same question comes back (a
source's answer, a person's record, a consent filter's answer, a parsed
Consent); each memo keeps only the entries used most recently, so memory is
bounded by the people seen lately, not by the population. ``Recent`` is that
bound, once: a memo reads with ``get``, says which entry it reused with
``used`` (only once it has checked the entry still holds), and adds with ``put``.
A memo that holds the very objects it was made from checks them with
``same_objects`` (it keeps them alive, so an id is never another object's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from operator import is_
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """An ordered mapping of at most ``maxsize`` entries, the least recently used first."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def used(self, key: K) -> None:
        """``key``'s entry was just reused: it goes last."""
        self.move_to_end(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` as the most recently used entry, forgetting the least recently
        used beyond ``maxsize``."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


def same_objects(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """The very same objects, in the same order (identity, not equality)."""
    # ``map`` over ``is_``: the comparison without a generator frame (a consent answer
    # reused is checked twice a request)
    # the very same sequence (a source's remembered answer, handed on as it is): no walk
    return a is b or (len(a) == len(b) and all(map(is_, a, b)))
