"""A soak: the platform under steady mixed load for minutes, watched for leaks and drift.

    .venv/bin/python -m loadtests.soak                 # 10 minutes at 70% of the capacity measured first
    .venv/bin/python -m loadtests.soak --minutes 2 --share 0.5

It serves the store's models with `bentoml serve` on a free loopback port and measures the capacity
first: Locust's users, unpaced, for --probe seconds. Then the same users, each paced to its share of
--share × capacity (Locust's constant_throughput), run for --minutes. Every --sample seconds it reads
each server process's RSS and open file descriptors (psutil). At the end it prints a row per minute:
RSS per process, descriptors, requests, p50/p99 and non-2xx answers. Then it prints a verdict on the
targets:
RSS growth after the first minute < 50 MB per process, descriptors flat (within 8), p99 of the last
minute within 20% of the second minute's, no 5xx. Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.servers import free_port, serve_command, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USERS = 12  # four of each class: images, forecasts, texts


@dataclass
class Targets:
    rss_growth_mb: float = 50.0
    fd_spread: int = 8
    p99_drift: float = 0.20


@dataclass
class Samples:
    """(seconds since the soak began, {pid: (name, rss bytes, open fds)}) every few seconds."""

    rows: list[tuple[float, dict[int, tuple[str, int, int]]]] = field(default_factory=list)

    def take(self, server: psutil.Process, started: float) -> None:
        seen = {}
        for process in [server, *server.children(recursive=True)]:
            try:
                with process.oneshot():
                    seen[process.pid] = (process.name(), process.memory_info().rss, process.num_fds())
            except psutil.NoSuchProcess:
                continue  # a worker restarting: the next sample sees its successor
        self.rows.append((time.monotonic() - started, seen))


def locust(url: str, users: int, seconds: float, prefix: Path, user_rps: float | None) -> None:
    env = {**os.environ, "LOADTEST_P95_MS": "1e9", "LOADTEST_MAX_FAILURE_RATIO": "1"}
    if user_rps is not None:
        env["LOADTEST_USER_RPS"] = str(user_rps)
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url]
    command += ["-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "--stop-timeout", "5"]
    command += ["--csv", str(prefix), "--csv-full-history", "--only-summary"]
    subprocess.run(command, env=env, check=False, capture_output=True)


def aggregated_rps(prefix: Path) -> float:
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return float(row["Requests/s"])


def minutes_of_history(prefix: Path) -> list[dict[str, float]]:
    """Per minute of Locust's history (Aggregated rows, a 10 s window each): requests, failures, p50, p99."""
    with open(f"{prefix}_stats_history.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated" and r["50%"] not in ("N/A", "0")]
    start = int(rows[0]["Timestamp"])
    by_minute: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_minute.setdefault((int(r["Timestamp"]) - start) // 60, []).append(r)
    minutes, requests, failures = [], 0, 0
    for minute, group in sorted(by_minute.items()):
        total, failed = int(group[-1]["Total Request Count"]), int(group[-1]["Total Failure Count"])
        minutes.append(
            {
                "minute": minute + 1,
                "requests": total - requests,
                "failures": failed - failures,
                "p50_ms": statistics.median(float(r["50%"]) for r in group),
                "p99_ms": statistics.median(float(r["99%"]) for r in group),
            }
        )
        requests, failures = total, failed
    return minutes


def server_errors(prefix: Path) -> int:
    """5xx answers among Locust's failures (its messages start with the HTTP status)."""
    with open(f"{prefix}_failures.csv") as f:
        return sum(int(r["Occurrences"]) for r in csv.DictReader(f) if r["Error"].lstrip("'\"").startswith("HTTP 5"))


def report(samples: Samples, minutes: list[dict[str, float]], errors_5xx: int, targets: Targets) -> list[str]:
    """Prints the table and returns the missed targets."""
    names = {pid: name for _, seen in samples.rows for pid, (name, _, _) in seen.items()}
    pids = sorted(names)
    columns = ["minute", "requests", "non-2xx", "p50 ms", "p99 ms", "open fds", *(f"RSS MB {p}" for p in pids)]
    print("| " + " | ".join(columns) + " |")
    print("|---" * (6 + len(pids)) + "|")
    for m in minutes:
        at = m["minute"] * 60
        last = [seen for t, seen in samples.rows if t <= at] or [samples.rows[0][1]]
        seen = last[-1]
        rss = " | ".join(f"{seen[p][1] / 2**20:.0f}" if p in seen else "–" for p in pids)
        fds = sum(v[2] for v in seen.values())
        latency = f"{m['p50_ms']:.0f} | {m['p99_ms']:.0f}"
        print(f"| {m['minute']} | {m['requests']} | {m['failures']} | {latency} | {fds} | {rss} |")
    print("processes: " + ", ".join(f"{pid} {name}" for pid, name in names.items()))

    missed = []
    after_first = [seen for t, seen in samples.rows if t >= 60] or [samples.rows[-1][1]]
    for pid in pids:
        rss = [seen[pid][1] for seen in after_first if pid in seen]
        if rss and (rss[-1] - min(rss)) / 2**20 > targets.rss_growth_mb:
            missed.append(f"process {pid} grew {(rss[-1] - min(rss)) / 2**20:.0f} MB after the first minute")
    fds = [sum(v[2] for v in seen.values()) for seen in after_first]
    if max(fds) - min(fds) > targets.fd_spread:
        missed.append(f"open descriptors ranged {min(fds)}..{max(fds)}")
    if len(minutes) >= 3:
        second, last = minutes[1]["p99_ms"], minutes[-1]["p99_ms"]
        if last > second * (1 + targets.p99_drift):
            missed.append(f"p99 drifted from {second:.0f} ms to {last:.0f} ms")
    if errors_5xx:
        missed.append(f"{errors_5xx} answers were 5xx")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.7, help="of the measured capacity (default: 0.7)")
    parser.add_argument("--probe", type=float, default=20.0, help="seconds of unpaced load to measure capacity")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        scratch_dir, port = Path(scratch), free_port()
        log_path = scratch_dir / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                serve_command(port),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(server, url, log_path)
            locust(url, USERS, args.probe, scratch_dir / "probe", user_rps=None)
            capacity = aggregated_rps(scratch_dir / "probe")
            rate = args.share * capacity
            print(f"capacity {capacity:.1f} requests/s with {USERS} unpaced users; soaking at {rate:.1f} requests/s")

            samples, started, done = Samples(), time.monotonic(), threading.Event()

            def watch() -> None:
                while not done.is_set():
                    samples.take(psutil.Process(server.pid), started)
                    done.wait(args.sample)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            locust(url, USERS, args.minutes * 60, scratch_dir / "soak", user_rps=rate / USERS)
            done.set()
            watcher.join()
            # Samples from after the load (Locust gone, its connections closed) say nothing about leaks.
            samples.rows = [row for row in samples.rows if row[0] < args.minutes * 60]
        finally:
            stop(server)
        missed = report(
            samples, minutes_of_history(scratch_dir / "soak"), server_errors(scratch_dir / "soak"), Targets()
        )
    print("soak: every target met" if not missed else "soak: MISSED: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
