"""prometheus_client (written against 0.26.0): multiprocess values that keep the pid in memory.

It reads the default value class's closure (`values.ValueClass`, made by `MultiProcessValue`) to know whether values
of it exist yet; tests/services/test_compat.py fails when an upgrade changes that class.
"""

from __future__ import annotations

import os

from prometheus_client import values

_PID = os.getpid()


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)


def this_process() -> int:
    return _PID


def values_without_a_system_call() -> None:
    """prometheus_client's multiprocess values ask the OS for the pid at every update, to notice a fork: a system
    call on every series' update (what it cost a worker: docs/benchmarks.md). The same
    class, with the pid kept in memory and read again after a fork, is swapped in — only while no value of the
    default class exists in this process (two classes would write the same files)."""
    default = values.ValueClass
    if not getattr(default, "_multiprocess", False):
        return  # one process: no files, no pid
    cells = dict(zip(default.__init__.__code__.co_freevars, default.__init__.__closure__ or ()))
    if "values" not in cells or cells["values"].cell_contents:
        return
    values.ValueClass = values.MultiProcessValue(process_identifier=this_process)
