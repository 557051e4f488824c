"""The workers' multiprocess values (services/metrics.py): prometheus_client's memory-mapped values with the pid
kept in memory, not asked of the OS at every update, and read again after a fork. Run in a child Python with
PROMETHEUS_MULTIPROC_DIR set, as a worker is."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECKS = textwrap.dedent(
    """
    import os
    from prometheus_client import CollectorRegistry, multiprocess
    from services import metrics

    count = metrics.REQUESTS.labels("/classify_text", "POST", "200", "http")
    made = type(count._value)._MmapedValue__check_for_pid_change
    cells = dict(zip(made.__code__.co_freevars, made.__closure__))
    assert cells["process_identifier"].cell_contents is metrics.this_process  # not os.getpid, a system call

    def in_files():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return sum(s.value for m in registry.collect() for s in m.samples if s.name == "modelroad_requests_total")

    for _ in range(32):
        count.inc()
    assert in_files() == 32.0  # each update written at once
    pid = os.fork()
    if pid == 0:  # a worker forked from here: its own file, counting from 0
        count.inc()
        files = os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        os._exit(0 if f"counter_{os.getpid()}.db" in files and count._value.get() == 1.0 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert in_files() == 33.0  # the parent's 32 and the child's 1, each in its own file
    print("ok")
    """
)


def test_a_workers_values_ask_no_pid_per_update_and_after_a_fork_count_in_a_file_of_its_own(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
