"""Bounded background work for the image pipeline: a prefetch thread and an ordered thread pool.

Why threads: decoding and preprocessing are OpenCV calls that release the GIL,
so a few threads use the cores the model leaves idle, while everything stays
in one process (no pickling of images, one copy of the model). Both helpers
are bounded (memory is what a worker host runs out of first) and keep the
input order, and both stop their threads when the consumer closes them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on a pool of ``threads`` threads, results in input order.

    At most ``ahead`` (default ``2 * threads``) items are submitted and not yet
    consumed, so a slow consumer holds back the pool and ``items`` is read lazily.
    An exception raised by ``fn`` reaches the consumer at that item's place in the
    order (the results before it are delivered first). Closing the generator
    cancels the items not started and waits for the running ones. ``threads`` <= 1
    runs ``fn`` in the consumer's thread (plain ``map``).
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    ahead = max(1, ahead if ahead is not None else 2 * threads)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hematovision-prepare")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prefetched(source: Iterator[T], depth: int = 1, name: str = "hematovision-prefetch") -> Iterator[T]:
    """Run ``source`` in a background thread (called ``name``, for profiles) at most ``depth`` items ahead of the consumer.

    Closing the returned generator stops the thread after the item it is working on
    and closes ``source`` in that thread (so a pool inside it is shut down too).
    """
    if depth < 1:
        yield from source
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise payload  # type: ignore[misc]
            yield payload  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
