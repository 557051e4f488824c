"""Schemathesis, a client nobody here wrote, against the served platform's OpenAPI document, every check on."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).with_name("schemathesis.toml")  # what is configured, and why


def test_schemathesis_finds_no_failure_in_the_served_openapi_contract(server, tmp_path):
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server}/docs.json",
        "--max-examples",
        "100",
        "--seed",
        "20261128",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    assert shutil.which(command[0]), "schemathesis is in the dev extra (scripts/setup.sh installs it)"
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-6000:]
    assert (tmp_path / "junit.xml").exists() or list(tmp_path.glob("*.xml")), "schemathesis ran no test cases"
