"""`python -m deploy.rollout`'s judgement without a server: windows summed over replicas (a restarted replica's
counters included), the quantile Prometheus computes, each verdict, waiting on too little traffic, and resuming a
stopped rollout (the runs against real servers and a real Prometheus are in tests/integration/test_rollout.py and
tests/integration/test_fleet.py)."""

import math

import pytest

from deploy.rollout import Limits, Rollout, Undecided, VersionWindow, increase, main, shadow_verdict, step_verdict


def scrape(model: str, version: str, ok: float, errors: float, buckets: dict[str, float]) -> dict:
    labels = (("model", model), ("version", version))
    samples = {
        ("modelroad_version_requests_total", tuple(sorted((*labels, ("outcome", "ok"))))): ok,
        ("modelroad_version_requests_total", tuple(sorted((*labels, ("outcome", "error"))))): errors,
    }
    for le, count in buckets.items():
        samples["modelroad_version_request_seconds_bucket", tuple(sorted((*labels, ("le", le))))] = count
    return samples


def window(ok: float, errors: float, buckets: dict[str, float]) -> VersionWindow:
    return VersionWindow.of(scrape("m", "v", ok, errors, buckets), "m", "v")


def test_a_window_counts_the_increase_between_scrapes_and_its_quantile_is_prometheus():
    before = scrape("m", "v", 100, 0, {"0.01": 100, "0.1": 100, "+Inf": 100})
    after = scrape("m", "v", 200, 0, {"0.01": 150, "0.1": 200, "+Inf": 200})
    moved = VersionWindow.of(increase(before, after), "m", "v")
    assert moved.requests == 100 and moved.error_ratio == 0
    # histogram_quantile(0.99, ...): rank 99 falls in (0.01, 0.1] holding 50 -> 0.01 + 0.09 * 49 / 50
    assert moved.quantile(0.99) == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert math.isnan(window(0, 0, {}).quantile(0.99))
    restarted = VersionWindow.of(increase(after, scrape("m", "v", 30, 0, {"+Inf": 30})), "m", "v")
    assert restarted.requests == 30, "a replica restarted mid-window counts from 0, not negative"


def test_each_step_verdict_says_why_it_fails_waits_or_passes_a_candidate_like_its_primary():
    limits = Limits(max_error_ratio=0.01, max_p99_ratio=1.5, min_requests=20)
    primary = window(1000, 0, {"0.01": 990, "0.1": 1000, "+Inf": 1000})
    assert step_verdict(primary, window(100, 0, {"0.01": 99, "0.1": 100, "+Inf": 100}), limits)[0] == "pass"
    assert step_verdict(primary, window(5, 0, {"0.01": 5, "+Inf": 5}), limits)[0] == "wait"
    failed, why = step_verdict(primary, window(95, 5, {"0.01": 95, "+Inf": 95}), limits)
    assert failed == "fail" and "error ratio 5.0%" in why
    failed, why = step_verdict(primary, window(100, 0, {"0.01": 50, "0.1": 100, "+Inf": 100}), limits)
    assert failed == "fail" and "the primary's" in why and "limit 1.5x" in why


def compared(agree: float, disagree: float, error: float) -> dict:
    labels = (("model", "m"), ("version", "c"))
    return {
        ("modelroad_shadow_comparisons_total", tuple(sorted((*labels, ("outcome", o))))): n
        for o, n in (("agree", agree), ("disagree", disagree), ("error", error))
    }


def test_the_shadow_judges_errors_and_disagreement_only_when_asked():
    judged = Limits(max_error_ratio=0.01, max_disagreement=0.05, min_requests=20)
    assert shadow_verdict(compared(98, 2, 0), "m", "c", judged)[0] == "pass"
    assert shadow_verdict(compared(90, 10, 0), "m", "c", judged) == (
        "fail",
        "the candidate disagreed with the primary on 10.0% of 100 inputs (limit 5.0%)",
    )
    assert "the shadow failed on 50.0%" in shadow_verdict(compared(50, 0, 50), "m", "c", judged)[1]
    assert shadow_verdict(compared(5, 0, 0), "m", "c", judged)[0] == "wait"
    # By default a better model answering differently (y = 3x + 1 against 2x + 1: every input) is reported only.
    verdict, why = shadow_verdict(compared(0, 100, 0), "m", "c", Limits())
    assert verdict == "pass" and "100.0% of 100 inputs (not judged" in why


class FakeServer:
    def __init__(self, policy: dict):
        self.policy, self.calls = policy, []

    def traffic(self, name: str, policy: dict | None = None) -> dict:
        if policy is not None:
            self.calls.append(policy)
            self.policy = {"shadow": None, **policy}
        return {"name": name, **self.policy}

    def load(self, name: str, version: str) -> None:
        self.calls.append({"load": version})
        self.policy = {"split": {version: 100.0}, "shadow": None}


class FakeFigures:
    """Figures that grow by `per_interval` each wait: a window is what was counted since its mark."""

    def __init__(self, per_interval: float):
        self.per_interval, self.counted, self.marked = per_interval, 0.0, 0.0

    def mark(self) -> None:
        self.marked = self.counted

    def tick(self, seconds: float) -> None:
        self.counted += self.per_interval

    def window(self) -> dict:
        n = self.counted - self.marked
        return {
            **compared(n, 0, 0),
            **scrape("m", "a", n, 0, {"0.01": n, "+Inf": n}),
            **scrape("m", "c", n, 0, {"0.01": n, "+Inf": n}),
        }


def test_too_little_traffic_waits_and_then_stops_undecided_leaving_its_step_in_force():
    server, figures = FakeServer({"split": {"a": 100.0}}), FakeFigures(per_interval=4)
    rollout = Rollout(server, figures, "m", Limits(min_requests=20, max_waits=2), 1.0, wait=figures.tick)
    with pytest.raises(Undecided):
        rollout.run("c", [50, 100])
    assert server.policy == {"split": {"a": 100}, "shadow": {"version": "c"}}, "no data must not roll back"
    figures.per_interval = 8  # three intervals of 8: enough once the window has grown
    assert rollout.run("c", [50, 100])[0] is True
    assert server.calls[-2:] == [{"split": {"a": 50, "c": 50}}, {"load": "c"}]


def test_a_rollout_stopped_at_a_step_resumes_there():
    server, figures = FakeServer({"split": {"a": 50.0, "c": 50.0}}), FakeFigures(per_interval=100)
    rollout = Rollout(server, figures, "m", Limits(), 1.0, wait=figures.tick)
    assert rollout.run("c", [10, 50, 80, 100]) == (True, "c promoted: it serves all of m's traffic")
    assert server.calls == [{"split": {"a": 50, "c": 50}}, {"split": {"a": 20, "c": 80}}, {"load": "c"}]


def test_the_command_needs_the_admin_token_and_states_every_gate_in_its_help(monkeypatch, capsys):
    monkeypatch.delenv("MODELROAD_ADMIN_TOKEN", raising=False)
    assert main(["m", "v2"]) == 2 and "MODELROAD_ADMIN_TOKEN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    helped = " ".join(capsys.readouterr().out.split())
    for gate in ("--max-error-ratio", "(default: 0.01)", "--max-p99-ratio", "(default: 1.5)", "--min-requests"):
        assert gate in helped, gate
    assert "--max-disagreement" in helped and "reported, not judged" in helped
