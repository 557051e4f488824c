"""The shared-memory benchmark: every form of sending a large input, checked answers, set against the binary body."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_shared_memory_benchmark_sets_every_form_against_the_binary_body(registered, tmp_path):
    # A store of its own that sees the session's models: the benchmark imports its graph there, not beside them.
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for model in (Path(os.environ["BENTOML_HOME"]) / "models").iterdir():
        (home / "models" / model.name).symlink_to(model)
    env = {**os.environ, "BENTOML_HOME": str(home)}
    command = [sys.executable, "-m", "bench.shared_memory", "--mib", "0.5", "--calls", "5", "--rounds", "2"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+)x \|$", result.stdout, re.MULTILINE)
    forms = ["binary HTTP body", "gRPC raw contents", "shared memory, REST call", "shared memory, gRPC call"]
    assert [form for form, *_ in rows] == forms, result.stdout
    assert rows[0][3] == "1.00" and all(float(ms) > 0 for _, ms, _, _ in rows)
    assert (home / "models" / "bench-sum").is_dir() and not (
        Path(os.environ["BENTOML_HOME"]) / "models" / "bench-sum"
    ).exists()
