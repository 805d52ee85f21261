"""The read-ahead window: a bounded, ordered, concurrent map over an async stream.

Why: a trace costs a round trip to Letta, and a backlog has millions. Running the lookups side
by side (up to a bound) keeps the requests in flight at the client's concurrency while the
consumer handles results strictly in source order, so the checkpoint never passes a record
that was not handled; the bound keeps memory flat however long the backlog.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


async def ordered_map(
    items: AsyncIterator[T],
    work: Callable[[T], Awaitable[R]],
    *,
    depth: int,
    needs_work: Callable[[T], bool],
    done: Callable[[T], R],
) -> AsyncIterator[R]:
    """``work(item)`` for every item, run ahead concurrently, yielded in the items' order.

    Args:
        items: the stream, read only as far as the window allows.
        work: the concurrent part (one task per item that needs it).
        depth: items with work in flight at most; items without work count four times
            less (they cost no request), up to ``4 * depth`` in the window.
        needs_work: whether an item needs a task (items of other shards do not: no task is
            made for them, which matters on a long backlog split between replicas).
        done: the result of an item that needs no work.

    An exception from ``work`` is raised when its item's turn comes; the tasks still in the
    window are then cancelled (and awaited) before this generator closes.
    """
    window: deque[asyncio.Future[R]] = deque()
    loop = asyncio.get_running_loop()
    working: deque[bool] = deque()  # per window slot: whether it holds a task
    in_flight = 0
    try:
        async for item in items:
            if needs_work(item):
                window.append(asyncio.ensure_future(work(item)))
                working.append(True)
                in_flight += 1
            else:
                ready = loop.create_future()
                ready.set_result(done(item))
                window.append(ready)
                working.append(False)
            while in_flight >= depth or len(window) >= depth * 4:
                head = window.popleft()
                in_flight -= working.popleft()
                yield await head
        while window:
            head = window.popleft()
            working.popleft()
            yield await head
    finally:
        for future in window:
            future.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)
        # Close the stream now rather than at garbage collection, so that what it holds open
        # (a page read ahead, a listing) is released in order.
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
