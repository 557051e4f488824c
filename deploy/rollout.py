"""Roll a model version out by steps, watching the server's own metrics, and promote it or roll it back.

    python -m deploy.rollout NAME VERSION --url URL [--steps 10,50,100] [--interval 60]
        [--max-error-ratio 0.01] [--max-p99-ratio 1.5] [--max-disagreement 0.05] [--min-requests 20]

The admin token comes from MODELROAD_ADMIN_TOKEN. First a shadow phase: the candidate gets a copy of every
request for one interval, answering none, and its answers are compared with the primary's (the only way both
versions see the same inputs: this is where disagreement is judged). Then each step sends the candidate that
share of requests for one interval, and compares its error ratio and p99 latency with the primary's over the
same interval. After the last step the candidate is loaded alone (promoted); at the first step that breaks a
limit, or a failure of the server, the primary is loaded alone again (rolled back), with the reason printed.
Exit status: 0 promoted, 1 rolled back, 2 could not start.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value


@dataclass(frozen=True)
class Limits:
    max_error_ratio: float = 0.01
    max_p99_ratio: float = 1.5
    max_disagreement: float = 0.05
    min_requests: int = 20


def scrape(client: httpx.Client) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Increase of every `name` sample matching `labels` between two scrapes, by its labels."""
    found = {}
    for (sample, key), value in after.items():
        if sample == name and all(dict(key).get(k) == v for k, v in labels.items()):
            found[key] = value - before.get((sample, key), 0.0)
    return found


@dataclass
class VersionWindow:
    """One version's requests over an interval: by outcome, and its latency histogram."""

    outcomes: dict[str, float]
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count)

    @classmethod
    def of(cls, before: Samples, after: Samples, model: str, version: str) -> VersionWindow:
        outcomes: dict[str, float] = defaultdict(float)
        for key, value in delta(
            before, after, "modelroad_version_requests_total", model=model, version=version
        ).items():
            outcomes[dict(key)["outcome"]] += value
        counts = delta(before, after, "modelroad_version_request_seconds_bucket", model=model, version=version)
        buckets = sorted((float(dict(key)["le"]), value) for key, value in counts.items())
        return cls(dict(outcomes), buckets)

    @property
    def requests(self) -> float:
        return sum(self.outcomes.values())

    @property
    def error_ratio(self) -> float:
        return self.outcomes.get("error", 0.0) / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if not total:
            return math.nan
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in self.buckets:
            if count >= rank:
                if math.isinf(upper):
                    return lower
                return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
            lower, below = upper, count
        return lower


class Server:
    """The repository extension's traffic and load calls, and the metrics, of one server."""

    def __init__(self, url: str, token: str, timeout_s: float = 120):
        self.client = httpx.Client(base_url=url, timeout=timeout_s, headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        response = self.client.request(method, path, json=json)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def traffic(self, name: str, policy: dict | None = None) -> dict:
        path = f"/v2/repository/models/{name}/traffic"
        return self._call("POST", path, policy) if policy is not None else self._call("GET", path)

    def load(self, name: str, version: str) -> None:
        self._call("POST", f"/v2/repository/models/{name}/load", {"parameters": {"version": version}})

    def metrics(self) -> Samples:
        return scrape(self.client)


def shadow_verdict(before: Samples, after: Samples, name: str, candidate: str, limits: Limits) -> str | None:
    """Why the shadow phase fails the candidate (None: it passes)."""
    counted = delta(before, after, "modelroad_shadow_comparisons_total", model=name, version=candidate)
    compared = {dict(key)["outcome"]: value for key, value in counted.items()}
    agree, disagree, errors = (compared.get(o, 0.0) for o in ("agree", "disagree", "error"))
    total = agree + disagree + errors
    if total < limits.min_requests:
        return f"the shadow saw {total:.0f} inputs (--min-requests {limits.min_requests}): too little traffic to judge"
    if errors / total > limits.max_error_ratio:
        return f"the shadow failed on {errors / total:.1%} of inputs (limit {limits.max_error_ratio:.1%})"
    disagreement = disagree / (agree + disagree) if agree + disagree else 1.0
    if disagreement > limits.max_disagreement:
        return (
            f"the candidate disagreed with the primary on {disagreement:.1%} of inputs "
            f"(limit {limits.max_disagreement:.1%})"
        )
    print(f"  {total:.0f} inputs compared, {disagreement:.1%} disagreement", flush=True)
    return None


def step_verdict(primary: VersionWindow, candidate: VersionWindow, limits: Limits) -> str | None:
    """Why a canary step fails the candidate (None: it passes)."""
    if candidate.requests < limits.min_requests:
        return (
            f"the candidate answered {candidate.requests:.0f} requests (--min-requests {limits.min_requests}): "
            "too little traffic to judge"
        )
    if candidate.error_ratio > max(limits.max_error_ratio, primary.error_ratio):
        return (
            f"the candidate's error ratio {candidate.error_ratio:.1%} is over the limit {limits.max_error_ratio:.1%} "
            f"and the primary's {primary.error_ratio:.1%}"
        )
    p99, base = candidate.quantile(0.99), primary.quantile(0.99)
    if base > 0 and p99 / base > limits.max_p99_ratio:
        return (
            f"the candidate's p99 {p99 * 1000:.1f} ms is {p99 / base:.2f}x the primary's {base * 1000:.1f} ms "
            f"(limit {limits.max_p99_ratio}x)"
        )
    print(
        f"  {candidate.requests:.0f} requests, errors {candidate.error_ratio:.1%}, "
        f"p99 {p99 * 1000:.1f} ms (primary {base * 1000:.1f} ms)",
        flush=True,
    )
    return None


def roll_out(
    server: Server,
    name: str,
    candidate: str,
    steps: list[float],
    interval_s: float,
    limits: Limits,
    wait: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """(promoted, why)."""
    current = server.traffic(name)
    if len(current["split"]) != 1 or current.get("shadow"):
        raise RuntimeError(f"{name} has a policy in force already ({current}); load one version first")
    (primary,) = current["split"]
    if primary == candidate:
        raise RuntimeError(f"{candidate} is already the version serving {name}")
    try:
        print(f"{name}: shadowing {candidate} beside {primary} for {interval_s:g} s", flush=True)
        before = server.metrics()
        server.traffic(name, {"split": {primary: 100}, "shadow": {"version": candidate, "percent": 100}})
        wait(interval_s)
        if why := shadow_verdict(before, server.metrics(), name, candidate, limits):
            return rollback(server, name, primary, why)
        for weight in steps:
            if weight >= 100:
                break
            print(f"{name}: {weight:g}% to {candidate} for {interval_s:g} s", flush=True)
            server.traffic(name, {"split": {primary: 100 - weight, candidate: weight}})
            before = server.metrics()
            wait(interval_s)
            after = server.metrics()
            windows = [VersionWindow.of(before, after, name, v) for v in (primary, candidate)]
            if why := step_verdict(*windows, limits):
                return rollback(server, name, primary, why)
        server.load(name, candidate)
    except (RuntimeError, httpx.HTTPError) as exc:
        return rollback(server, name, primary, f"the server failed during the rollout: {exc}")
    return True, f"{candidate} promoted: it serves all of {name}'s traffic"


def rollback(server: Server, name: str, primary: str, why: str) -> tuple[bool, str]:
    server.load(name, primary)
    return False, f"rolled back to {primary}: {why}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--steps", default="10,50,100", help="the candidate's shares in percent, comma-separated")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds each phase and step runs")
    parser.add_argument("--max-error-ratio", type=float, default=Limits.max_error_ratio)
    parser.add_argument("--max-p99-ratio", type=float, default=Limits.max_p99_ratio)
    parser.add_argument("--max-disagreement", type=float, default=Limits.max_disagreement)
    parser.add_argument("--min-requests", type=int, default=Limits.min_requests)
    args = parser.parse_args(argv)
    token = os.environ.get("MODELROAD_ADMIN_TOKEN")
    if not token:
        print("set MODELROAD_ADMIN_TOKEN to the server's admin token", file=sys.stderr)
        return 2
    try:
        steps = [float(s) for s in args.steps.split(",")]
    except ValueError:
        print(f"--steps {args.steps!r}: write percentages, e.g. 10,50,100", file=sys.stderr)
        return 2
    limits = Limits(args.max_error_ratio, args.max_p99_ratio, args.max_disagreement, args.min_requests)
    try:
        promoted, why = roll_out(Server(args.url, token), args.name, args.version, steps, args.interval, limits)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"cannot roll out: {exc}", file=sys.stderr)
        return 2
    print(why, flush=True)
    return 0 if promoted else 1


if __name__ == "__main__":
    sys.exit(main())
