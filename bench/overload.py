"""Overload: wrk at several times the sustainable concurrency, every answer counted by status, and a probe
client timing single requests meanwhile, so that refusals and admitted requests are timed apart.

The platform serves it with MODELROAD_MAX_IN_FLIGHT set to the sustainable concurrency per worker; what
passes: only 200 and 429/503 answers, every refusal with Retry-After, refusals within `REFUSAL_MS`,
and admitted requests still answered.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REFUSAL_MS = 50.0  # a refusal must come this fast: a client should learn at once to go elsewhere
REFUSED = (429, 503)

# Counts answers by status in every wrk thread and prints them when the run ends (wrk's own summary
# only says how many were not 2xx/3xx).
COUNT_STATUSES = (
    "local refused = {"
    + ", ".join(f"[{status}] = true" for status in REFUSED)
    + "}"
    + """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; without_retry_after = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if refused[status] and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    without_retry_after = without_retry_after + 1
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do io.write(string.format("status %d %d\\n", status, n)) end
    io.write(string.format("without_retry_after %d\\n", thread:get("without_retry_after")))
  end
end
"""
)


@dataclass
class Overload:
    family: str
    concurrency: int
    max_in_flight: int  # per worker
    ok_rps: float
    refused_rps: float
    statuses: dict[int, int]  # every wrk answer by status
    socket_errors: int
    refused_without_retry_after: int
    probe_ok: int
    probe_ok_p99_ms: float
    probe_refused: int
    probe_refused_p99_ms: float

    @property
    def problems(self) -> list[str]:
        """What broke the overload promises; empty when it held."""
        problems = [f"{n} answers with status {s}" for s, n in self.statuses.items() if s != 200 and s not in REFUSED]
        if self.socket_errors:
            problems.append(f"{self.socket_errors} socket errors")
        if self.refused_without_retry_after:
            problems.append(f"{self.refused_without_retry_after} refusals without Retry-After")
        if not self.statuses.get(200):
            problems.append("no request was admitted")
        if self.probe_refused and self.probe_refused_p99_ms > REFUSAL_MS:
            problems.append(f"refusals took {self.probe_refused_p99_ms:.1f} ms at p99 (limit {REFUSAL_MS:.0f} ms)")
        return problems


def parse_counts(output: str) -> tuple[dict[int, int], int, int]:
    """(answers by status, refusals without Retry-After, socket errors) from wrk run with COUNT_STATUSES."""
    statuses: dict[int, int] = {}
    for status, n in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE):
        statuses[int(status)] = statuses.get(int(status), 0) + int(n)
    missing = sum(int(n) for n in re.findall(r"^without_retry_after (\d+)$", output, re.MULTILINE))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return statuses, missing, sum(int(n) for n in socket.groups()) if socket else 0


def probe(url: str, content_type: str, body: bytes, stop: threading.Event) -> list[tuple[int, float]]:
    """One request after another until `stop`: (status, milliseconds) of each."""
    timings = []
    with httpx.Client(timeout=10, headers={"content-type": content_type}) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = client.post(url, content=body).status_code
            except httpx.HTTPError:
                status = 0
            timings.append((status, (time.perf_counter() - started) * 1e3))
    return timings


def p99(values: list[float]) -> float:
    return round(float(np.percentile(values, 99)), 2) if values else 0.0


def run_overload(
    url: str,
    family: str,
    script: Path,
    content_type: str,
    body: bytes,
    concurrency: int,
    duration: int,
    max_in_flight: int,
) -> Overload:
    """wrk at `concurrency` for `duration` s; the probe runs from the 2nd second to 1 s before the end."""
    script.write_text(script.read_text() + COUNT_STATUSES)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url]
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    threading.Timer(max(1, duration - 1), stop.set).start()
    time.sleep(1)
    timings = probe(url, content_type, body, stop)
    output, _ = wrk.communicate(timeout=duration + 30)
    if wrk.returncode:
        raise RuntimeError(f"wrk failed:\n{output}")
    statuses, missing, socket_errors = parse_counts(output)
    refused = [ms for status, ms in timings if status in REFUSED]
    admitted = [ms for status, ms in timings if status == 200]
    probe_other = [status for status, _ in timings if status != 200 and status not in REFUSED]
    for status in probe_other:  # the probe's odd answers count with wrk's
        statuses[status] = statuses.get(status, 0) + 1
    return Overload(
        family,
        concurrency,
        max_in_flight,
        ok_rps=round(statuses.get(200, 0) / duration, 1),
        refused_rps=round(sum(statuses.get(s, 0) for s in REFUSED) / duration, 1),
        statuses=statuses,
        socket_errors=socket_errors,
        refused_without_retry_after=missing,
        probe_ok=len(admitted),
        probe_ok_p99_ms=p99(admitted),
        probe_refused=len(refused),
        probe_refused_p99_ms=p99(refused),
    )
