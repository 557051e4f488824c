"""The wrk benchmark: its parser on real wrk output, and one short run against the platform and its floors."""
import json

import pytest

from loadtests.bench import Result, main, parse_wrk, ratio_table

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:3000/classify_text
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.95ms    8.76ms  98.02ms   93.10%
  Latency Distribution
     50%   12.20ms
     75%   14.10ms
     90%   18.54ms
     99%    1.02s
  1725 requests in 3.02s, 1.01MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    571.73
Transfer/sec:    341.88KB
"""


def test_wrk_output_is_read_into_rps_percentiles_in_ms_and_errors():
    rps, percentiles, errors = parse_wrk(WRK_OUTPUT)
    assert rps == 571.73
    assert percentiles == {"50": 12.2, "75": 14.1, "90": 18.54, "99": 1020.0}
    assert errors == 4 + 2 + 1


def test_the_ratio_table_sets_the_platform_against_each_target_at_one_concurrency():
    results = [Result("platform", "text", 32, 900, 10, 20, 30, 0), Result("platform", "text", 8, 500, 5, 6, 7, 0),
               Result("fastapi-torch", "text", 32, 300, 40, 50, 60, 0), Result("ort", "text", 1, 9000, 0.1, 0.1, 0.1, 0),
               Result("bentoml-noop", "image", 32, 100, 1, 2, 3, 0)]  # fmt: skip
    assert ratio_table(results, 32)[2:] == ["| text | fastapi-torch | 3.00 | 30.0 | 60.0 |"]


@pytest.mark.slow
def test_a_short_benchmark_measures_every_target_and_writes_its_reports(registered, tmp_path, capsys):
    targets = ["platform", "platform-unbatched", "bentoml-noop", "starlette", "ort", "fastapi-torch", "ray-serve"]
    assert main(["--targets", *targets, "--families", "text", "--concurrency", "4", "--duration", "1",
                 "--workers", "1", "--out", str(tmp_path)]) == 0  # fmt: skip
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["target"] for r in results] == targets
    assert all(r["family"] == "text" and r["rps"] > 0 and r["errors"] == 0 for r in results)
    assert (tmp_path / "bench.png").stat().st_size > 0
    report = (tmp_path / "bench.md").read_text()
    assert "| text | platform | 4 |" in report and "| text | ray-serve |" in report
