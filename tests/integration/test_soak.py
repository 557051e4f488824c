"""The soak: steady paced load against its own real server, RSS and descriptors watched, a verdict."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loadtests.soak import Samples, Targets, report
from tests.integration.conftest import ROOT, private_home


def minute(n: int, p99: float = 20.0) -> dict[str, float]:
    return {"minute": n, "requests": 600, "failures": 0, "p50_ms": 8.0, "p99_ms": p99}


def test_the_verdict_names_growth_leaked_descriptors_drift_and_5xx(capsys):
    samples = Samples()
    for t, rss_mb, fds in [(0, 200, 40), (70, 210, 41), (130, 300, 60), (190, 320, 60)]:
        samples.rows.append((t, {11: ("bentoml", rss_mb * 2**20, fds)}))
    missed = report(samples, [minute(1), minute(2), minute(3, p99=30.0)], errors_5xx=2, targets=Targets())
    assert len(missed) == 4 and "grew 110 MB" in missed[0] and "5xx" in missed[3]
    assert "| 3 | 600 | 0 | 8 | 30 | 60 | 300 |" in capsys.readouterr().out  # the last sample in minute 3

    steady = Samples(rows=[(t, {11: ("bentoml", 200 * 2**20, 40)}) for t in (0, 70, 130, 190)])
    assert report(steady, [minute(1), minute(2), minute(3, p99=22.0)], errors_5xx=0, targets=Targets()) == []


@pytest.mark.slow
def test_a_short_soak_against_a_real_server_meets_its_targets(registered, session_dir):
    env = {**os.environ, "BENTOML_HOME": str(private_home(session_dir, "soak-home"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = ["-m", "loadtests.soak", "--minutes", "1.2", "--probe", "5", "--sample", "2"]
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "capacity" in done.stdout and "| 1 |" in done.stdout, done.stdout + done.stderr[-2000:]
    assert done.returncode == 0 and "soak: every target met" in done.stdout, done.stdout
