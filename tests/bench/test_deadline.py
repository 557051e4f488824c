"""The deadline benchmark times 504s at the client and at the server, and /livez meanwhile, in one run."""

import re

import pytest

from bench.deadline import main


@pytest.mark.slow
def test_the_deadline_benchmark_times_504s_at_both_ends_and_livez(registered, capsys):
    assert main(["--seconds", "3", "--connections", "8", "--texts", "16"]) == 0
    out = capsys.readouterr().out
    answered = int(re.search(r"server answered (\d+) with 504", out).group(1))
    assert answered > 10, out
    for where in ("client", "server"):
        p50, p99 = map(float, re.search(rf"504 at the {where}: p50 ([\d.]+) ms .* p99 ([\d.]+) ms", out).groups())
        assert 50 <= p50 <= p99, out  # a 504 never comes before its deadline
    assert float(re.search(r"/livez meanwhile: \d+ probes, p99 ([\d.]+) ms", out).group(1)) > 0
