"""`python -m training serve` (what `make serve` runs): every family on HOST:PORT, training first the default models
the store lacks, and serving each family as soon as its model is registered.

With every default model in the store this is `bentoml serve`. Otherwise the missing tasks train in lanes
(training/lanes.py), their output in a log file; their progress records (contracts/progress.py) give one line per
lane on the terminal. The server starts once one task's model is registered and every other task has queued its
interface card (or failed); the others join it when registered (services/dataplane/pending.py), each announced here
once the server's /readyz no longer lists it as awaited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from subprocess import Popen

from contracts.progress import PROGRESS_FOLDER, TrainingProgress
from harness.servers import serve_command
from training.lanes import start_lanes

POLL_S = 2.0
LINE_EVERY_S = 30.0


def lane_now(lane: list[str], records: dict[str, TrainingProgress]) -> TrainingProgress | None:
    """The lane's task in progress: its first not done (None: the lane is done)."""
    return next((records[t] for t in lane if t in records and not records[t].done), None)


def lane_line(number: int, lane: list[str], records: dict[str, TrainingProgress]) -> str:
    current = lane_now(lane, records)
    if current is None:
        return f"lane {number}: done ({', '.join(lane)})"
    return f"lane {number}: {current.describe()}"


def can_start(records: dict[str, TrainingProgress], stored: bool) -> bool:
    """A model to serve (one `stored` before, or one registered since), and every run's interface known (or the run
    failed): the routes of all are built at start."""
    registered = stored or any(r.state == "registered" for r in records.values())
    return registered and all(r.done or r.card for r in records.values())


def awaited(url: str) -> dict[str, str] | None:
    """The server's /readyz body's awaited models (None while it does not answer yet)."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
            return json.loads(answer.read())["waiting"]
    except urllib.error.HTTPError as refused:  # 503 while loading: still a body
        try:
            return json.loads(refused.read())["waiting"]
        except (ValueError, KeyError):
            return None
    except (OSError, ValueError, KeyError):
        return None


class Supervisor:
    """The training lanes and the server, and what the terminal has been told of them."""

    def __init__(self, folder: Path, log_path: Path, url: str, stored: bool):
        self.folder, self.log_path, self.url = folder, log_path, url
        self.stored = stored  # some default model was in the store before: the server need not wait for one
        self.started = time.monotonic()
        self.lanes: list[tuple[list[str], Popen]] = []
        self.server: Popen | None = None
        self.shown: dict[int, tuple] = {}  # each lane's last (task, state), line and when it was shown
        self.announced: set[str] = set()  # tasks whose end was said
        self.finished = False

    def say(self, line: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        print(f"[{minutes:02d}:{seconds:02d}] {line}", flush=True)

    def watch(self, server_command: list[str], env: dict[str, str]) -> int:
        """Until the server stops (its exit status), or every run ended with nothing to serve (1)."""
        while True:
            records = TrainingProgress.load_all(self.folder)
            self.show_lanes(records)
            if self.server is None and can_start(records, self.stored):
                self.say(f"starting the server on {self.url}: the models still training join it when registered")
                self.server = Popen(server_command, env=env)
            self.announce(records, awaited(self.url) if self.server else None)
            training = any(process.poll() is None for _, process in self.lanes)
            if self.server is None and not training:
                self.say(f"no model could be trained: see {self.log_path}")
                return 1
            if self.server is not None and self.server.poll() is not None:
                return self.server.returncode
            if not training and not self.finished:
                self.finished = True
                failed = [r.task for r in records.values() if r.state == "failed"]
                self.say(
                    "training finished" + (f"; failed: {', '.join(failed)} (log: {self.log_path})" if failed else "")
                )
            time.sleep(POLL_S)

    def show_lanes(self, records: dict[str, TrainingProgress]) -> None:
        """A lane's line when its task or state changes, else at most every LINE_EVERY_S (the GRU's epochs take
        seconds: a line each would be a wall)."""
        now = time.monotonic()
        for number, (lane, _) in enumerate(self.lanes, 1):
            current = lane_now(lane, records)
            step = (current.task, current.state) if current else None
            line = lane_line(number, lane, records)
            last_step, last_line, at = self.shown.get(number, ((), "", 0.0))
            if step != last_step or (line != last_line and now - at >= LINE_EVERY_S):
                self.shown[number] = (step, line, now)
                self.say(line)

    def announce(self, records: dict[str, TrainingProgress], waiting: dict[str, str] | None) -> None:
        """A failed run at once; a registered model once it answers (before the server starts: once registered)."""
        for record in records.values():
            if record.task in self.announced or not record.done:
                continue
            if record.state == "failed" or self.server is None:
                self.announced.add(record.task)
                self.say(record.describe())
            elif waiting is not None and record.task not in waiting:
                self.announced.add(record.task)
                self.say(f"{record.describe()}; it answers on {self.url}")

    def stop(self) -> None:
        processes = [process for _, process in self.lanes] + ([self.server] if self.server else [])
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()


def serve(tasks: list[str], host: str, port: int, lanes: int, flags: list[str], out_dir: Path, stored: bool) -> int:
    """Train `tasks` (none: serve at once) and serve every family, the `stored` default models among them; the
    server's exit status (1: nothing to serve)."""
    command = serve_command(port, host=host)
    if not tasks:
        os.execv(command[0], command)  # the server takes this process's place (and its signals)
    folder, logs = out_dir / "progress", out_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    log_path = logs / time.strftime("training-%Y%m%d-%H%M%S.log")
    for task in tasks:
        TrainingProgress(task, log=str(log_path)).save(folder)
    env = {**os.environ, PROGRESS_FOLDER: str(folder.resolve())}
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    supervisor = Supervisor(folder, log_path, url, stored)
    supervisor.say(f"training {', '.join(tasks)} (not in the store); the full log: {log_path}")
    # SIGTERM (a service manager, `kill`) stops the lanes and the server too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    with open(log_path, "ab") as log_file:
        supervisor.lanes = start_lanes(tasks, lanes, flags, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            return supervisor.watch(command, env)
        except KeyboardInterrupt:
            return 130
        finally:
            supervisor.stop()
