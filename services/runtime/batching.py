"""Adaptive micro-batching for one runner.

Requests queue while the runner is busy; when it is free, it takes everything queued
(up to `max_items` items, counting the items inside each request, not requests) and runs
it as one batch. An idle runner starts at once, or after `max_wait_s` when asked to wait
for company and `company()` says some is coming (other requests admitted and not yet queued):
a lone request on an idle server does not wait. Nothing is rejected for a deadline: overload is
for admission control.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.ops.metrics import BATCH_SIZE, QUEUE_SECONDS

P = TypeVar("P")  # one request's payload
R = TypeVar("R")  # one request's result


class Admitted:
    """Requests admitted in this process and not answered yet, every protocol's edge together (services/edge/gate.py
    counts them): a batcher's hint that a lone request has company coming (another request is between the edge
    and the batcher)."""

    count = 0

    @classmethod
    def others(cls) -> bool:
        return cls.count > 1


@dataclass
class _Pending(Generic[P, R]):
    payload: P
    items: int
    future: asyncio.Future[R]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[P, R]):
    def __init__(
        self,
        name: str,
        infer: Callable[[Sequence[P]], Sequence[R]],
        count_items: Callable[[P], int],
        max_items: int,
        max_wait_s: float = 0.0,
        company: Callable[[], bool] = lambda: True,
        version: str = "",
    ):
        """`name` and `version`: the model version whose series count the batches."""
        self.name = name
        self._infer = infer
        self._count_items = count_items
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self._company = company
        # Children made once (`labels()` costs per call).
        self._queued_for, self._items = QUEUE_SECONDS.labels(name, version), BATCH_SIZE.labels(name, version)
        self._queue: deque[_Pending[P, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: ONNX Runtime parallelizes inside a call; batches run one after another.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"runner-{name}")

    async def submit(self, payload: P) -> R:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}")
        pending = _Pending(payload, self._count_items(payload), loop.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def close(self) -> None:
        """Stop the worker task and the thread; calls still queued (none, once drained) are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
        for pending in self._queue:
            pending.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=False)

    def _take_batch(self) -> list[_Pending[P, R]]:
        """The next batch; requests whose client timed out or left while queued are dropped, not computed.

        The first live request is taken even if alone it exceeds max_items: it was admitted.
        """
        batch: list[_Pending[P, R]] = []
        items = 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():
                self._queue.popleft()
                continue
            if batch and items + pending.items > self.max_items:
                break
            batch.append(self._queue.popleft())
            items += pending.items
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s and len(self._queue) == 1 and self._company():
                await asyncio.sleep(self.max_wait_s)
            batch = self._take_batch()
            if not batch:
                continue
            started = time.perf_counter()
            for pending in batch:
                self._queued_for.observe(started - pending.queued_at)
            self._items.observe(sum(p.items for p in batch))
            try:
                results = await loop.run_in_executor(self._executor, self._infer, [p.payload for p in batch])
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():  # the client may have gone away
                    pending.future.set_result(result)
