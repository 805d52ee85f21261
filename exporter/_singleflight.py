"""The one request-sharing cache: concurrent lookups of one key share one load.

Why: the read-ahead window fetches the steps of one run (and of one agent) side by side; without
sharing, each would send its own identical request. The cache is bounded (least recently used
out), because a long backlog touches every run once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, overload

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class SingleFlight(Generic[K, V]):
    """A bounded cache whose misses are loaded once however many callers wait.

    The load runs as its own task: a caller cancelled while waiting does not cancel it for the
    others, and a load whose every waiter went away still fills the cache. A failed load is not
    cached (the next caller tries again) and its error goes to every waiter.

    Args:
        max_size: entries kept; the least recently used go first.
    """

    def __init__(self, *, max_size: int) -> None:
        self._max = max_size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._loads: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    @overload
    def cached(self, key: K) -> V | None: ...
    @overload
    def cached(self, key: K, default: D) -> V | D: ...
    def cached(self, key: K, default: object = None) -> object:
        """The cached value without loading (``default`` on a miss)."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        return default

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` (a record that arrived another way, e.g. in a listing)."""
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self._max:
            self._values.popitem(last=False)

    def clear(self) -> None:
        """Forget every value (loads under way still finish and fill the cache)."""
        self._values.clear()

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value for ``key``: cached, shared with a load under way, or loaded by ``load``."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        loading = self._loads.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, load))
            self._loads[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(loading)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        value = await load()
        self.put(key, value)
        return value

    def _loaded(self, key: K, done: asyncio.Future[V]) -> None:
        if self._loads.get(key) is done:
            del self._loads[key]
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have been cancelled
