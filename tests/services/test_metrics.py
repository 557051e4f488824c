"""The workers' multiprocess values (services/metrics.py): written once a turn of the event loop, in files of
their own process after a fork. Run in a child Python with PROMETHEUS_MULTIPROC_DIR set, as a worker is."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECKS = textwrap.dedent(
    """
    import asyncio, os, threading
    from prometheus_client import CollectorRegistry, multiprocess
    from prometheus_client.mmap_dict import MmapedDict
    from services import metrics

    count = metrics.REQUESTS.labels("/classify_text", "POST", "200", "http")
    writes = []
    write_value = MmapedDict.write_value
    MmapedDict.write_value = lambda self, *args: writes.append(args[1]) or write_value(self, *args)

    def in_files():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        found = [s.value for m in registry.collect() for s in m.samples if s.name == "modelroad_requests_total"]
        return found[0] if found else 0.0

    count.inc()
    assert in_files() == 1.0 and writes == [1.0], writes  # no loop in this thread: written at once

    async def turns():
        for _ in range(32):
            count.inc()
        assert in_files() == 1.0  # not yet: the loop's turn goes on
        await asyncio.sleep(0)
        assert in_files() == 33.0 and writes == [1.0, 33.0], writes  # 32 updates, one write
        count.inc()
        assert [s.value for m in metrics.all_workers().collect() for s in m.samples
                if s.name == "modelroad_requests_total"] == [34.0]  # a reader flushes this turn's first
        other = threading.Thread(target=count.inc)
        other.start()
        other.join()
        assert in_files() == 35.0  # another thread writes at once

    asyncio.run(turns())
    pid = os.fork()
    if pid == 0:  # a worker forked from here: its own file, counting from 0
        count.inc()
        files = os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        os._exit(0 if f"counter_{os.getpid()}.db" in files and count._value.get() == 1.0 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert in_files() == 36.0
    print("ok")
    """
)


def test_a_workers_values_are_written_once_a_turn_of_its_loop_and_read_with_this_turns_updates(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
