import asyncio
import threading

import pytest

from services.runtime.batching import MicroBatcher


class Recorder:
    """An infer function that records the batches it was given and can be held busy."""

    def __init__(self):
        self.batches: list[list[list[int]]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, payloads):
        self.release.wait(5)
        self.batches.append(list(payloads))
        return [sum(p) for p in payloads]


def run(coro):
    return asyncio.run(coro)


def test_an_idle_runner_answers_a_lone_request_at_once():
    infer = Recorder()
    batcher = MicroBatcher("t", infer, len, max_items=8)
    assert run(batcher.submit([1, 2, 3])) == 6
    assert infer.batches == [[[1, 2, 3]]]


def test_requests_queued_while_busy_share_one_batch_counted_in_items():
    infer = Recorder()
    batcher = MicroBatcher("t", infer, len, max_items=5)

    async def scenario():
        infer.release.clear()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is now running (held)
        queued = [asyncio.create_task(batcher.submit([i, i])) for i in range(4)]  # 2 items each
        await asyncio.sleep(0.05)
        infer.release.set()
        return await first, await asyncio.gather(*queued)

    first, rest = run(scenario())
    assert first == 1 and rest == [0, 2, 4, 6]
    sizes = [sum(len(p) for p in batch) for batch in infer.batches]
    assert sizes[0] == 1
    assert all(size <= 5 for size in sizes[1:])  # 4 requests x 2 items never exceed 5 items a batch
    assert len(infer.batches) == 3  # [[0,0],[1,1]], [[2,2],[3,3]]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def infer(payloads):
        calls.append(payloads)
        if payloads[0] == [0]:
            raise RuntimeError("boom")
        return [len(p) for p in payloads]

    batcher = MicroBatcher("t", infer, len, max_items=4)

    async def scenario():
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([0])
        return await batcher.submit([5, 6])

    assert run(scenario()) == 2


@pytest.mark.parametrize(
    ("coming", "batches"),
    [(True, [[[1], [2]]]), (False, [[[1]], [[2]]])],
    ids=["company-coming-waits", "alone-does-not-wait"],
)
def test_max_wait_lets_a_lone_request_wait_only_when_company_is_coming(coming, batches):
    """`company` says whether other requests were admitted: with none, the first runs before the second arrives."""
    infer = Recorder()
    batcher = MicroBatcher("t", infer, len, max_items=8, max_wait_s=0.05, company=lambda: coming)

    async def scenario():
        a = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(batcher.submit([2]))
        return await asyncio.gather(a, b)

    assert run(scenario()) == [1, 2]
    assert infer.batches == batches


def test_requests_abandoned_while_queued_are_not_computed():
    infer = Recorder()
    batcher = MicroBatcher("t", infer, len, max_items=8)

    async def scenario():
        infer.release.clear()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is now running (held)
        abandoned = asyncio.create_task(batcher.submit([7, 7]))
        kept = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0.01)
        abandoned.cancel()  # what a request timeout or a client disconnect does
        infer.release.set()
        return await first, await kept, await asyncio.gather(abandoned, return_exceptions=True)

    first, kept, (abandoned,) = run(scenario())
    assert (first, kept) == (1, 2) and isinstance(abandoned, asyncio.CancelledError)
    assert infer.batches == [[[1]], [[2]]]
