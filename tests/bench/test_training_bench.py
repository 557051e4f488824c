"""The training benchmark times one process, two processes and bf16 for the same task in one run."""

import re

import pytest

from bench.training import main


@pytest.mark.slow
def test_the_training_benchmark_prints_a_row_per_set_up_with_the_first_as_base(capsys):
    # The GRU: oneDNN on some CPUs has no bf16 LSTM kernel ("could not create a primitive descriptor").
    assert main(["--tasks", "co2-gru", "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| co2-gru")]
    assert [re.search(r"(1 process|2 processes).*?(fp32|bf16)", r).groups() for r in rows] == [
        ("1 process", "fp32"),
        ("2 processes", "fp32"),
        ("1 process", "bf16"),
    ]
    assert "| 1.00× |" in rows[0] and all(float(r.split("|")[3]) > 0 for r in rows)
