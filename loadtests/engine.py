"""The load loop: one asyncio task per connection (closed loop) or Poisson arrivals (open loop), measured in
windows until three agree (perf_analyzer's stability rule) or the step's time is up. Over HTTP (`Load`) or the
inference protocol's gRPC (`GrpcLoad`: pre-serialized requests, answers not decoded, one HTTP/2 channel).

aiohttp on one event loop, not Locust: at 32 connections Locust's FastHttpUser spent more client CPU per
request than this loop (`python -m loadtests.engines` measures both against one server; docs/load-testing.md
has the figures), and on 2 shared cores the client's CPU is the server's.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import numpy as np

from loadtests.requests import Encoded

MAX_OUTSTANDING = 4096  # open loop: arrivals past this many unanswered requests are not sent (and counted)


@dataclass
class Answered:
    done_at: float  # monotonic seconds
    seconds: float  # from the request's (intended) start to its answer
    status: str  # the HTTP status (gRPC's OK counts as 200, other codes by name), or `connection`
    rows: int


@dataclass
class Step:
    """One step's measurement: its load (a concurrency or a rate), what was answered, and how."""

    concurrency: int | None
    rate: float | None
    answered: list[Answered] = field(default_factory=list)
    seconds: float = 0.0  # the measured windows' length
    stable: bool = False
    client_cpu: float = 0.0  # share of one core this process used during the step
    not_sent: int = 0

    @property
    def load(self) -> str:
        return f"c={self.concurrency}" if self.concurrency else f"{self.rate:g}/s"

    @property
    def requests_per_s(self) -> float:
        return len(self.answered) / self.seconds if self.seconds else 0.0

    @property
    def inferences_per_s(self) -> float:
        return sum(a.rows for a in self.answered if a.status == "200") / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        ok = [a.seconds for a in self.answered if a.status == "200"]
        return float(np.percentile(ok, q) * 1000) if ok else float("nan")

    @property
    def statuses(self) -> dict[str, int]:
        return dict(Counter(a.status for a in self.answered))

    @property
    def error_ratio(self) -> float:
        return sum(1 for a in self.answered if a.status != "200") / len(self.answered) if self.answered else 1.0


class Load:
    """Sends requests to one URL and records their answers."""

    def __init__(self, url: str, requests: Sequence[Encoded], headers: dict[str, str]):
        self.url, self.requests, self.headers = url, requests, headers
        self.answered: list[Answered] = []
        self.sent = 0

    def session(self, timeout_s: float) -> AbstractAsyncContextManager[Any]:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))

    def next_request(self) -> Encoded:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request

    async def send(self, session: aiohttp.ClientSession, start: float | None = None) -> None:
        request = self.next_request()
        start = time.monotonic() if start is None else start
        try:
            async with session.post(self.url, data=request.body, headers={**request.headers, **self.headers}) as answer:
                await answer.read()
                status = str(answer.status)
        except (TimeoutError, aiohttp.ClientError):
            status = "connection"
        now = time.monotonic()
        self.answered.append(Answered(now, now - start, status, request.rows))

    async def closed(self, session: Any, concurrency: int, running: asyncio.Event) -> None:
        async def connection() -> None:
            while running.is_set():
                await self.send(session)

        await asyncio.gather(*(connection() for _ in range(concurrency)))

    async def open(self, session: Any, rate: float, running: asyncio.Event, step: Step) -> None:
        rng = np.random.default_rng(0)
        pending: set[asyncio.Task] = set()
        next_at = time.monotonic()
        while running.is_set():
            next_at += rng.exponential(1 / rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if len(pending) >= MAX_OUTSTANDING:
                step.not_sent += 1
                continue
            task = asyncio.create_task(self.send(session, start=next_at))  # latency from the intended arrival
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)


class GrpcLoad(Load):
    """`ModelInfer` calls to a gRPC address: each body a serialized ModelInferRequest, headers sent as metadata."""

    METHOD = "/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, address: str, requests: Sequence[Encoded], headers: dict[str, str]):
        super().__init__(address, requests, headers)
        self.metadata = tuple((name.lower(), value) for name, value in headers.items())  # made once, sent per call
        self.timeout_s = 30.0

    @asynccontextmanager
    async def session(self, timeout_s: float) -> AsyncIterator[Any]:
        self.timeout_s = timeout_s
        async with grpc.aio.insecure_channel(self.url) as channel:
            yield channel.unary_unary(self.METHOD)  # bytes in, bytes out: no (de)serializing in the client

    async def send(self, infer: Any, start: float | None = None) -> None:
        request = self.next_request()
        start = time.monotonic() if start is None else start
        try:
            await infer(request.body, metadata=self.metadata, timeout=self.timeout_s)
            status = "200"
        except grpc.aio.AioRpcError as refused:
            status = refused.code().name
        now = time.monotonic()
        self.answered.append(Answered(now, now - start, status, request.rows))


def window_figures(answered: Sequence[Answered], start: float, end: float) -> tuple[float, float]:
    """Requests/s and mean latency of the answers that completed in [start, end)."""
    inside = [a.seconds for a in answered if start <= a.done_at < end]
    return len(inside) / (end - start), (sum(inside) / len(inside) if inside else float("nan"))


def stable(windows: Sequence[tuple[float, float]], tolerance: float = 0.10) -> bool:
    """perf_analyzer's rule: the last three windows' throughput and latency each within ±10% of their mean."""
    if len(windows) < 3:
        return False
    for values in zip(*windows[-3:]):
        mean = sum(values) / 3
        if not mean or any(abs(v - mean) > tolerance * mean for v in values):
            return False
    return True


async def run_step(
    load: Load,
    concurrency: int | None,
    rate: float | None,
    warmup_s: float,
    window_s: float,
    max_s: float,
    timeout_s: float,
) -> Step:
    """One step: warm-up discarded, then windows until three are stable or `max_s` has passed."""
    step = Step(concurrency, rate)
    running = asyncio.Event()
    running.set()
    async with load.session(timeout_s) as session:
        driver = asyncio.create_task(
            load.closed(session, concurrency, running) if concurrency else load.open(session, rate, running, step)
        )
        began = time.monotonic()
        await asyncio.sleep(warmup_s)
        measured_from, cpu_from = time.monotonic(), time.process_time()
        windows: list[tuple[float, float]] = []
        while not stable(windows) and time.monotonic() - began < max_s:
            await asyncio.sleep(window_s)
            end = time.monotonic()
            windows.append(window_figures(load.answered, end - window_s, end))
        ended = time.monotonic()
        step.stable = stable(windows)
        step.client_cpu = (time.process_time() - cpu_from) / (ended - measured_from)
        # The stable windows (or, unstable, every measured one) are the step's figures.
        start = ended - 3 * window_s if step.stable else measured_from
        step.answered = [a for a in load.answered if start <= a.done_at < ended]
        step.seconds = ended - start
        running.clear()
        await driver
    load.answered.clear()
    return step
