"""Stores whose methods cannot hold an event loop for longer than the database's limit.

The request path awaits ``Database.run`` for its database work, which does not hold
the event loop at all. This is the default underneath it, for whatever calls a store
on the loop directly (a new route, a new store method): on PostgreSQL, whose server
is across a network that can stall, each public method of a store marked
``@loop_bounded`` runs through ``Database.bounded`` when it is called on an event
loop, so the loop waits for it at most the statement timeout, and once one call is
stuck the next ones fail at once (``StorageUnavailable``, a 503) instead of each
holding the loop again. Off the loop (the export runner's threads, the CLI, a
``Database.run`` thread) a method is simply called. SQLite is a local file whose
busy timeout already bounds every wait: its calls go straight through.

Methods marked ``@bounds_itself`` are left alone: the indexed reads on the hot
connection bound themselves, with a shorter limit (``storage.hot``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=type)


def bounds_itself(fn: Callable[P, T]) -> Callable[P, T]:
    """Mark a store method that bounds its own wait (or never waits for the database)."""
    fn.__bounds_itself__ = True  # type: ignore[attr-defined]
    return fn


def loop_bounded(cls: C) -> C:
    """Bound every public method of the store class ``cls`` (which keeps its
    ``Database`` as ``self.db``) on an event loop, but generators (their work runs when
    they are iterated, not when they are called) and ``@bounds_itself`` methods."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        if inspect.isgeneratorfunction(fn) or getattr(fn, "__bounds_itself__", False):
            continue
        setattr(cls, name, _bounded(fn))
    return cls


def _bounded(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        db = cast(Any, args[0]).db
        if db.is_sqlite:
            return fn(*args, **kwargs)
        return cast(T, db.bounded(functools.partial(fn, *args, **kwargs)))

    return call
