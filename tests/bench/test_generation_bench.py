"""The step-batching benchmark measures both modes at both concurrencies in one run."""

import re

import pytest

from bench.generation import main


@pytest.mark.slow
def test_the_generation_benchmark_sets_step_batching_against_every_call_alone(registered, capsys):
    assert main(["--seconds", "1.5", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"\| (step batching|every call alone) \| (\d+) \| ([\d,.]+) \| ([\d,.]+) \| ([\d,.]+) \|", out)
    assert [(mode, clients) for mode, clients, *_ in rows] == [
        ("step batching", "1"),
        ("step batching", "4"),
        ("every call alone", "1"),
        ("every call alone", "4"),
    ], out
    assert all(float(rate.replace(",", "")) > 0 for _, _, rate, _, _ in rows)
    assert all(float(p50.replace(",", "")) <= float(p99.replace(",", "")) for *_, p50, p99 in rows)
    gains = dict(re.findall(r"(step batching|every call alone): c=4 gives ([\d.]+)x", out))
    assert set(gains) == {"step batching", "every call alone"}, out
