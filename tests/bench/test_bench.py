"""The wrk benchmark: its parser on real wrk output, and one short run against the platform and its floors."""

import json

import pytest

from bench.overload import Overload, parse_counts
from bench.run import Result, engine_table, main, median_run, parse_wrk, ratio_table, serves

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


def test_a_point_is_its_median_run_with_every_runs_errors():
    runs = [(900.0, {"99": 30.0}, 0), (300.0, {"99": 90.0}, 2), (1200.0, {"99": 20.0}, 1)]
    assert median_run(runs) == (900.0, {"99": 30.0}, 3)
    assert median_run(runs[:1]) == runs[0]


def test_the_ratio_table_sets_the_platform_against_each_target_at_one_concurrency():
    results = [
        Result("platform", "text", 32, 900, 10, 20, 30, 0),
        Result("platform", "text", 8, 500, 5, 6, 7, 0),
        Result("fastapi-torch", "text", 32, 300, 40, 50, 60, 0),
        Result("ort", "text", 1, 9000, 0.1, 0.1, 0.1, 0),
        Result("bentoml-noop", "image", 32, 100, 1, 2, 3, 0),
    ]
    assert ratio_table(results, 32)[2:] == ["| text | fastapi-torch | 3.00 | 30.0 | 60.0 |"]


def test_the_engine_table_sets_onnx_runtime_against_pytorch_eager_per_family():
    results = [
        Result("ort", "text", 1, 3000, 0.3, 0.3, 0.4, 0),
        Result("torch-eager", "text", 1, 1000, 1, 1, 1, 0),
        Result("ort", "image", 1, 5000, 0.2, 0.2, 0.2, 0),
        Result("platform", "text", 32, 900, 10, 20, 30, 0),
    ]
    assert engine_table(results)[2:] == ["| text | 3000 | 1000 | 3.00 |"]
    assert engine_table(results[2:]) == []


COUNTED_OUTPUT = """Running 1s test @ http://127.0.0.1:3999/readyz
  2 threads and 4 connections
  8034 requests in 1.10s, 1.43MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 8034
Requests/sec:   7303.26
status 503 4504
status 200 10
without_retry_after 3
status 503 3530
without_retry_after 0
"""


def test_answers_counted_by_status_are_summed_over_wrk_threads():
    assert parse_counts(COUNTED_OUTPUT) == ({503: 8034, 200: 10}, 3, 3)


def overload(statuses: dict[int, int], refusal_p99_ms: float = 5.0, **changes) -> Overload:
    return Overload(
        **{
            "family": "text",
            "concurrency": 128,
            "max_in_flight": 16,
            "ok_rps": 1,
            "refused_rps": 1,
            "statuses": statuses,
            "socket_errors": 0,
            "refused_without_retry_after": 0,
            "probe_ok": 3,
            "probe_ok_p99_ms": 40.0,
            "probe_refused": 9,
            "probe_refused_p99_ms": refusal_p99_ms,
            **changes,
        }
    )


@pytest.mark.parametrize(
    "case,problem",
    [
        (overload({200: 5, 503: 50}), None),
        (overload({200: 5, 429: 50}), None),
        (overload({200: 5, 503: 50, 504: 1}), "1 answers with status 504"),
        (overload({200: 5, 500: 2}), "2 answers with status 500"),
        (overload({503: 50}), "no request was admitted"),
        (overload({200: 5, 503: 50}, refusal_p99_ms=51), "refusals took 51.0 ms at p99 (limit 50 ms)"),
        (overload({200: 5, 503: 50}, refused_without_retry_after=4), "4 refusals without Retry-After"),
        (overload({200: 5, 503: 50}, socket_errors=2), "2 socket errors"),
    ],
)
def test_overload_promises_name_what_broke(case, problem):
    assert case.problems == ([problem] if problem else [])


@pytest.mark.slow
def test_a_short_benchmark_measures_every_target_and_writes_its_reports(registered, tmp_path, capsys):
    targets = [
        "platform",
        "platform-unbatched",
        "platform-runner-service",
        "bentoml-noop",
        "bentoml-mounted",
        "starlette",
        "ort",
        "torch-eager",
        "fastapi-torch",
        "ray-serve",
        "kserve",
        "mlserver",
    ]
    assert (
        main(
            [
                "--targets",
                *targets,
                "platform-overload",
                "--families",
                "text",
                "oip-json",
                "grpc",
                "--concurrency",
                "4",
                "--duration",
                "3",
                "--rounds",
                "1",
                "--workers",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    results, (overloaded,) = report["results"], report["overload"]
    served = [(t, f) for t in targets for f in ("text", "oip-json", "grpc") if f in serves(t)]
    assert [(r["target"], r["family"]) for r in results] == served
    assert {"kserve", "mlserver", "platform"} <= {t for t, f in served if f == "oip-json"}
    assert all(r["rps"] > 0 and r["errors"] == 0 for r in results)
    assert (tmp_path / "bench.png").stat().st_size > 0
    # 4 admitted, 16 connections: every answer a 200 or a 503 with Retry-After, some of each
    assert (overloaded["concurrency"], overloaded["max_in_flight"]) == (16, 4)
    assert set(overloaded["statuses"]) == {"200", "503"} and overloaded["refused_without_retry_after"] == 0
    assert overloaded["socket_errors"] == 0 and overloaded["probe_refused"] + overloaded["probe_ok"] > 0
    markdown = (tmp_path / "bench.md").read_text()
    assert "| family | ONNX Runtime items/s | PyTorch eager items/s | ratio at batch 1 |" in markdown
    assert (
        "| text | platform | 4 |" in markdown and "| text | ray-serve |" in markdown and "| text | 16 | 4 |" in markdown
    )
    assert "| oip-json | kserve |" in markdown and "| oip-json | mlserver |" in markdown
    assert {"kserve", "mlserver", "platform"} <= {t for t, f in served if f == "grpc"}
    assert "| grpc | kserve |" in markdown and "| grpc | platform | 4 |" in markdown
