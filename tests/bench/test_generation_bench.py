"""The generation benchmark measures both generators in both modes at both concurrencies in one run."""

import re

import pytest

from bench.generation import main


@pytest.mark.slow
def test_the_generation_benchmark_sets_the_generators_and_step_batching_side_by_side(registered, capsys):
    assert main(["--seconds", "1.5", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    row = r"\| (fashion-\w+) \| (step batching|every call alone) \| (\d+) \| ([\d,.]+) \| ([\d,.]+) \| ([\d,.]+) \|"
    rows = re.findall(row, out)
    assert [(model, mode, clients) for model, mode, clients, *_ in rows] == [
        (model, mode, clients)
        for mode in ("step batching", "every call alone")
        for model in ("fashion-diffusion", "fashion-gan")
        for clients in ("1", "4")
    ], out
    assert all(float(rate.replace(",", "")) > 0 for *_, rate, _, _ in rows)
    assert all(float(p50.replace(",", "")) <= float(p99.replace(",", "")) for *_, p50, p99 in rows)
    gains = re.findall(r"(fashion-\w+), (step batching|every call alone): c=4 gives ([\d.]+)x", out)
    assert len(gains) == 4, out
    ratios = re.findall(r"fashion-gan over fashion-diffusion, (step batching|every call alone): c=1 ([\d.]+)x", out)
    assert [mode for mode, _ in ratios] == ["step batching", "every call alone"], out
