"""Train several tasks side by side: `python -m training ensure` on a fresh machine.

Small nets use two cores badly (measured here, 2 cores: a GRU step takes as long on 1 thread as on 2;
the CNN and the Transformer run 1.5-1.65x faster on 2 threads than on 1), so two processes of one thread
each finish the default tasks sooner than one process of two threads. Tasks go longest first onto the
lane with the least work so far, by each task's `expected_seconds`; a task that needs another's model trains after
it (those too longest first: the diffusion model, the generation family's default, before the GAN).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from subprocess import Popen
from typing import Any

from training.tasks import TASKS

log = logging.getLogger(__name__)


def plan_lanes(tasks: list[str], lanes: int) -> list[list[str]]:
    """Longest first onto the least-loaded lane; empty lanes dropped. A task that needs another being trained goes
    last in that one's lane (a lane trains in order); else last onto the least-loaded lane."""
    plan: list[list[str]] = [[] for _ in range(max(1, min(lanes, len(tasks))))]
    load = [0.0] * len(plan)
    later = sorted((name for name in tasks if TASKS[name].needs), key=lambda t: -TASKS[t].expected_seconds)
    for name in sorted((t for t in tasks if t not in later), key=lambda t: -TASKS[t].expected_seconds):
        lane = load.index(min(load))
        plan[lane].append(name)
        load[lane] += TASKS[name].expected_seconds
    for name in later:
        holding = [i for i, lane in enumerate(plan) if set(TASKS[name].needs) & set(lane)]
        lane = holding[0] if holding else load.index(min(load))
        plan[lane].append(name)
        load[lane] += TASKS[name].expected_seconds
    return [lane for lane in plan if lane]


def start_lanes(tasks: list[str], lanes: int, flags: list[str], **popen: Any) -> list[tuple[list[str], Popen]]:
    """`python -m training train <lane's tasks> <flags>` per lane, all at once, the cores split between them (unless
    the flags set --threads); each lane's tasks and process (`popen`: e.g. where its output goes)."""
    plan = plan_lanes(tasks, lanes)
    threads = [] if "--threads" in flags else ["--threads", str(max(1, (os.cpu_count() or 1) // len(plan)))]
    log.info("training in %d lanes: %s", len(plan), " | ".join(", ".join(lane) for lane in plan))
    command = [sys.executable, "-m", "training", "train"]
    return [(lane, subprocess.Popen([*command, *lane, *threads, *flags], **popen)) for lane in plan]


def train_in_lanes(tasks: list[str], lanes: int, flags: list[str]) -> int:
    """Every lane trained to its end; returns the first non-zero exit status, else 0."""
    codes = [process.wait() for _, process in start_lanes(tasks, lanes, flags)]
    return next((code for code in codes if code != 0), 0)
