"""`python -m deploy.rollout`'s judgement without a server: windows of two scrapes, the quantile Prometheus
computes, and each verdict (the promote and rollback runs against a real server are in
tests/integration/test_rollout.py)."""

import math

import pytest

from deploy.rollout import Limits, VersionWindow, main, shadow_verdict, step_verdict


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
    """A version's window from nothing to one scrape."""
    return VersionWindow.of({}, scrape("m", "v", ok, errors, buckets), "m", "v")


def test_a_window_counts_the_increase_between_scrapes_and_its_quantile_is_prometheus():
    before = scrape("m", "v", 100, 0, {"0.01": 100, "0.1": 100, "+Inf": 100})
    after = scrape("m", "v", 200, 0, {"0.01": 150, "0.1": 200, "+Inf": 200})
    moved = VersionWindow.of(before, after, "m", "v")
    assert moved.requests == 100 and moved.error_ratio == 0
    # histogram_quantile(0.99, ...): rank 99 falls in (0.01, 0.1] holding 50 -> 0.01 + 0.09 * 49 / 50
    assert moved.quantile(0.99) == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert math.isnan(window(0, 0, {}).quantile(0.99))


def test_each_step_verdict_says_why_it_fails_and_passes_a_candidate_like_its_primary():
    limits = Limits(max_error_ratio=0.01, max_p99_ratio=1.5, min_requests=20)
    primary = window(1000, 0, {"0.01": 990, "0.1": 1000, "+Inf": 1000})
    assert step_verdict(primary, window(100, 0, {"0.01": 99, "0.1": 100, "+Inf": 100}), limits) is None
    assert "too little traffic" in step_verdict(primary, window(5, 0, {"0.01": 5, "+Inf": 5}), limits)
    assert "error ratio 5.0%" in step_verdict(primary, window(95, 5, {"0.01": 95, "+Inf": 95}), limits)
    slow = window(100, 0, {"0.01": 50, "0.1": 100, "+Inf": 100})
    why = step_verdict(primary, slow, limits)
    assert "the primary's" in why and "limit 1.5x" in why


def test_the_shadow_verdict_judges_disagreement_and_shadow_errors():
    def compared(agree: float, disagree: float, error: float) -> dict:
        labels = (("model", "m"), ("version", "c"))
        return {
            ("modelroad_shadow_comparisons_total", tuple(sorted((*labels, ("outcome", o))))): n
            for o, n in (("agree", agree), ("disagree", disagree), ("error", error))
        }

    limits = Limits(max_error_ratio=0.01, max_disagreement=0.05, min_requests=20)
    assert shadow_verdict({}, compared(98, 2, 0), "m", "c", limits) is None
    assert "disagreed with the primary on 10.0%" in shadow_verdict({}, compared(90, 10, 0), "m", "c", limits)
    assert "the shadow failed on 50.0%" in shadow_verdict({}, compared(50, 0, 50), "m", "c", limits)
    assert "too little traffic" in shadow_verdict({}, compared(5, 0, 0), "m", "c", limits)


def test_the_command_needs_the_admin_token(monkeypatch, capsys):
    monkeypatch.delenv("MODELROAD_ADMIN_TOKEN", raising=False)
    assert main(["m", "v2"]) == 2 and "MODELROAD_ADMIN_TOKEN" in capsys.readouterr().err
