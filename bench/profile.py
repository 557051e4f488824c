"""Where a route's time goes: the platform served with one worker, wrk on one route, py-spy on the worker.

    .venv/bin/python -m bench.profile image                      # results/profile/image.{svg,txt}
    .venv/bin/python -m bench.profile text oip-json --seconds 5 --concurrency 32

The first half of the run is recorded as a flame graph (SVG, py-spy's), the second as collapsed stacks, which
give the text report: the functions the worker spends its samples in (self: the innermost frame; total: anywhere
on the stack), as shares of all samples, with the requests/s wrk measured while py-spy sampled (py-spy pauses
the process at each sample, 100 a second: rates under it are lower than the benchmark's). Idle threads are not
sampled, so the shares are of the worker's busy time. Needs wrk and py-spy (ptrace: root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.run import BIN, CLASSIC, ROOT, Request, family_requests, oip_requests, parse_wrk, wrk_script
from harness.servers import free_port, serve_command, stop, wait_ready

TOP = 25
LINE = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Frames:
    """Sample counts by function (`name (file)`) from py-spy's collapsed stacks."""

    samples: int
    own: collections.Counter[str]
    total: collections.Counter[str]

    @classmethod
    def from_collapsed(cls, text: str) -> Frames:
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        samples = 0
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            # The first is the thread; a function counts once, whatever its line (`name (file:line)` -> `name (file)`).
            frames = [LINE.sub(")", frame) for frame in stack.split(";")[1:]]
            samples += int(count)
            if frames:
                own[frames[-1]] += int(count)
            for frame in set(frames):
                total[frame] += int(count)
        return cls(samples, own, total)

    def report(self, top: int = TOP) -> str:
        lines = [f"{self.samples} samples"]
        for title, counts in (("self", self.own), ("total", self.total)):
            lines.append(f"\n{title}: share of samples, function (file)")
            for frame, count in counts.most_common(top):
                lines.append(f"{100 * count / max(self.samples, 1):6.1f}%  {frame}")
        return "\n".join(lines) + "\n"


def worker_pids(server_pid: int) -> list[int]:
    """The BentoML workers under a `bentoml serve` process: the descendants that answer requests (the Python
    processes with no Python children)."""
    pythons = [p for p in psutil.Process(server_pid).children(recursive=True) if "python" in p.name().lower()]
    return sorted(p.pid for p in pythons if not any(c in pythons for c in p.children()))


def py_spy(pid: int, seconds: int, out: Path, form: str) -> None:
    # --gil: only the thread holding the GIL, the Python work that one worker does one piece at a time (a thread
    # waiting in C, e.g. on a queue, is otherwise often sampled as busy).
    command = [str(BIN / "py-spy"), "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--gil", "-f", form]
    subprocess.run([*command, "-o", str(out)], check=True, capture_output=True)


def profile(
    name: str, request: Request, url: str, pid: int, seconds: int, concurrency: int, out: Path, top: int = TOP
) -> str:
    """wrk for the whole run; the flame graph over its first half, the stacks over its second."""
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        script = wrk_script(request, Path(tmp))
        load = ["wrk", "-t1", f"-c{concurrency}", f"-d{2 * seconds + 1}s", "--latency", "-s", str(script)]
        wrk = subprocess.Popen([*load, url + request.route], stdout=subprocess.PIPE, text=True)
        py_spy(pid, seconds, out / f"{name}.svg", "flamegraph")
        py_spy(pid, seconds, Path(tmp) / "stacks.txt", "raw")
        stacks = (Path(tmp) / "stacks.txt").read_text()
        rps, percentiles, errors = parse_wrk(wrk.communicate()[0])
    head = f"{name} ({request.route}), c={concurrency}, under py-spy: {rps:.0f} requests/s, p99 {percentiles['99']} ms"
    text = f"{head}, {errors} errors\n{Frames.from_collapsed(stacks).report(top)}"
    (out / f"{name}.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    requests = {**{f: r for f, r in family_requests().items() if f in CLASSIC}, **oip_requests()}
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="+", choices=sorted(requests), help="request families (bench's names)")
    parser.add_argument("--seconds", type=int, default=5, help="of each recording (the flame graph, the stacks)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--top", type=int, default=TOP, help="functions listed, by self and by total samples")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "profile")
    args = parser.parse_args(argv)
    if not (shutil.which("wrk") and (BIN / "py-spy").exists()):
        parser.error("needs wrk (apt) and py-spy (the dev extra)")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = serve_command(port)
    env = {"MODELROAD_WORKERS": "1", "MODELROAD_GRPC_PORT": str(free_port()), "BENTOML_DO_NOT_TRACK": "true"}
    log_path = args.out / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(server, url, log_path)
        (pid,) = worker_pids(server.pid)  # one worker: it answers every request
        for name in args.routes:
            print(
                profile(name, requests[name], url, pid, args.seconds, args.concurrency, args.out, args.top), flush=True
            )
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
