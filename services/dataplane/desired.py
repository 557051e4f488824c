"""The fleet's desired state: what every replica on one model store serves (store tags, and each model's version
policy), one JSON document kept beside the store with a generation number, changed by compare-and-set and kept
across restarts; and each worker's report of the generation it applies.

A change may name the generation it was based on (as Kubernetes' resourceVersion): one based on another generation
than the current one is refused with 409 and the current generation, and changes nothing. Every worker of every
replica polls the document (one small file read every 0.2 s) and applies it (services/dataplane/admin.py); a worker
that cannot apply a generation keeps its last good state and says why in its report, which the admin's answers,
/readyz and the generation metrics read.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.errors import Conflict

log = logging.getLogger(__name__)

PRIVATE = "MODELROAD_PRIVATE_STATE"  # a server's own state folder, for its workers to inherit
REPLICA = "MODELROAD_REPLICA"  # set by the server's first process (or the fleet) for its workers to inherit
LIVE_S = 5.0  # a worker whose report is older than this is gone (a replica stopped or killed)
FORGET_S = 3600.0  # reports this old are removed by the next reader


class StaleGeneration(Conflict):
    """A change based on a generation that is no longer the current one."""

    def __init__(self, based_on: int, current: int):
        super().__init__(
            f"the change is based on generation {based_on}, but the fleet's state is at generation {current}: "
            "read it again (GET the policy) and send the change based on that"
        )
        self.fields = {"generation": current}


class UnreadableState(Exception):
    """The document cannot be read or is not a state (hand-edited, half-copied, its volume gone for a while)."""


@dataclass
class Served:
    """What the fleet serves: store tags, and version policies by model name (their JSON records)."""

    generation: int
    tags: list[str]
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Served:
        try:
            record = json.loads(text)
            served = cls(int(record["generation"]), list(record["tags"]), dict(record.get("policies") or {}))
        except (ValueError, TypeError, KeyError) as exc:
            raise UnreadableState(f"not a state document ({type(exc).__name__}: {exc})") from None
        if not all(isinstance(tag, str) and ":" in tag for tag in served.tags):
            raise UnreadableState(f"its tags must be store tags (name:version); got {served.tags}")
        return served


@dataclass
class WorkerReport:
    """One worker's progress: the generation it serves, the newest it has read, and why it lags (if it does)."""

    replica: str
    pid: int
    applied: int
    desired: int
    problem: str | None = None
    seen: float = 0.0  # wall-clock time of the report (workers of several hosts share the volume)

    @property
    def name(self) -> str:
        return f"{self.replica}/{self.pid}"


def replica_name() -> str:
    """This server's name in the fleet: MODELROAD_REPLICA, else the host and the server's first process."""
    if not os.environ.get(REPLICA):
        os.environ[REPLICA] = f"{socket.gethostname()}-{os.getpid()}"
    return os.environ[REPLICA]


class DesiredState:
    """The document (`served.json`), its lock, and the workers' reports (`workers/`), in one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "served.json"
        self.workers = folder / "workers"

    @classmethod
    def at(cls, folder: Path, tags: Sequence[str], policies: dict[str, dict[str, Any]] | None = None) -> DesiredState:
        """The state in `folder`; a fleet's first server writes its start (`tags`, `policies`) as generation 1."""
        state = cls(folder)
        state.workers.mkdir(parents=True, exist_ok=True)
        with state._locked():
            if not state.file.exists():
                state._write(Served(1, list(tags), dict(policies or {})))
        return state

    @classmethod
    def of_server(cls, tags: Sequence[str], policies: dict[str, dict[str, Any]] | None = None) -> DesiredState:
        """A state of one server's own, for its workers alone, gone when it stops (what a server without the
        repository extension changes: only models joining as their training registers them). Made by `bentoml
        serve`'s first process, which imports the service before it starts the workers; they inherit the folder."""
        if folder := os.environ.get(PRIVATE):
            return cls(Path(folder))
        made = Path(tempfile.mkdtemp(prefix="modelroad-served-"))
        os.environ[PRIVATE] = str(made)
        atexit.register(shutil.rmtree, made, True)
        return cls.at(made, tags, policies)

    def read(self) -> Served:
        try:
            return Served.parse(self.file.read_text())
        except OSError as exc:
            raise UnreadableState(f"cannot be read ({exc.strerror or exc})") from None

    def change(self, edit: Callable[[Served], None], based_on: int | None = None) -> int:
        """Apply `edit` (in place) under the lock if the state is still at `based_on` (None: whatever it is);
        the new generation. StaleGeneration when it is not; Conflict when the document cannot be read."""
        with self._locked():
            try:
                served = self.read()
            except UnreadableState as unreadable:
                raise Conflict(f"the fleet's state {self.file} {unreadable}: fix or remove it first") from None
            if based_on is not None and based_on != served.generation:
                raise StaleGeneration(based_on, served.generation)
            edit(served)
            served.generation += 1
            self._write(served)
            return served.generation

    def report(self, report: WorkerReport) -> None:
        report.seen = time.time()
        _replace(self.workers / f"{report.replica}.{report.pid}.json", json.dumps(asdict(report)))

    def reports(self) -> list[WorkerReport]:
        """The live workers' reports (fresher than LIVE_S); stale ones long gone are removed."""
        now, live = time.time(), []
        for path in self.workers.glob("*.json"):
            try:
                report = WorkerReport(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # being replaced, or not a report
            if now - report.seen < LIVE_S:
                live.append(report)
            elif now - report.seen > FORGET_S:
                path.unlink(missing_ok=True)
        return sorted(live, key=lambda r: (r.replica, r.pid))

    def _locked(self):
        return _Lock(self.folder / "lock")

    def _write(self, served: Served) -> None:
        _replace(self.file, json.dumps(asdict(served), indent=1))


class _Lock:
    """An exclusive lock on a file, held for a read and a write of the small document."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)  # readers see the old file or the new one, never a part


def fleet_report(reports: Sequence[WorkerReport], generation: int) -> dict[str, Any]:
    """Which replicas serve `generation` (every live worker of theirs has applied it) and which lag, and why."""
    replicas: dict[str, list[WorkerReport]] = {}
    for report in reports:
        replicas.setdefault(report.replica, []).append(report)
    applied, lagging = [], []
    for replica, workers in sorted(replicas.items()):
        behind = [w for w in workers if w.applied < generation]
        if not behind:
            applied.append(replica)
            continue
        problems = sorted({w.problem for w in behind if w.problem})
        lagging.append(
            {
                "replica": replica,
                "applied": min(w.applied for w in behind),
                "reason": "; ".join(problems) if problems else "applying",
            }
        )
    return {"generation": generation, "applied": applied, "lagging": lagging}
