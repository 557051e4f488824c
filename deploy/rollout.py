"""Roll a model version out by steps, judged on the whole fleet's figures, and promote it or roll it back.

    python -m deploy.rollout NAME VERSION [--prometheus URL | --url URL [--url URL ...]] [--admin URL]
        [--steps 10,50,100] [--interval 60] [--max-error-ratio 0.01] [--max-p99-ratio 1.5]
        [--max-disagreement RATIO] [--min-requests 20] [--max-waits 5]

The admin token comes from MODELROAD_ADMIN_TOKEN. Each step is written to the fleet's state through one replica
(`--admin`, default the first `--url`: the load balancer will do), so the policy in force is the same on every
replica. The figures are the fleet's: with `--prometheus`, PromQL `increase()` over the step's interval summed over
every replica a real Prometheus scrapes; without, the `/metrics` of every `--url` (give each replica's), summed.

First a shadow phase: the candidate gets a copy of every request for one interval, answering none, and its answers
are compared with the primary's (the only way both versions see the same inputs). Its errors are judged;
its disagreement is reported, and judged only with `--max-disagreement` (a better model is expected to answer
differently). Then each step sends the candidate its share of requests for one interval and compares its error
ratio and p99 latency with the primary's over the same interval. A phase with fewer than `--min-requests`
is inconclusive: the rollout waits another interval (and says so), up to `--max-waits` times, then stops
leaving the step in force: it neither promotes nor rolls back on no data. After the last step the candidate is
loaded alone (promoted); at the first step that breaks a limit, or a failure of the server, the primary is
loaded alone again (rolled back), with the reason printed. Ctrl-C stops it leaving the step in force, stated;
running the same command again resumes from that step (or `--rollback` ends it with the primary alone).
Exit status: 0 promoted, 1 rolled back, 2 could not start, 3 stopped undecided (too little traffic, Ctrl-C).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value
JUDGED = ("modelroad_version_requests_total", "modelroad_version_request_seconds_bucket")
COMPARED = "modelroad_shadow_comparisons_total"


@dataclass(frozen=True)
class Limits:
    max_error_ratio: float = 0.01
    max_p99_ratio: float = 1.5
    max_disagreement: float | None = None  # None: reported, not judged
    min_requests: int = 20
    max_waits: int = 5  # intervals a phase may wait for enough traffic


# Each gate's flag, type, default and meaning, for --help.
GATES = [
    (
        "--max-error-ratio",
        float,
        Limits.max_error_ratio,
        "the candidate's errors (and the shadow's), at most; or the primary's if higher",
    ),
    ("--max-p99-ratio", float, Limits.max_p99_ratio, "the candidate's p99 over the primary's, at most"),
    (
        "--max-disagreement",
        float,
        Limits.max_disagreement,
        "the shadow's disagreement with the primary, at most (None: reported, not judged)",
    ),
    ("--min-requests", int, Limits.min_requests, "a phase's fewest requests to judge; fewer: it waits"),
    ("--max-waits", int, Limits.max_waits, "intervals a phase waits for enough traffic before stopping undecided"),
]


class Undecided(Exception):
    """The rollout stopped without a verdict, its step in force."""


def scrape(client: httpx.Client) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def matching(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every `name` sample whose labels include `labels`, by its labels."""
    return {
        key: value
        for (sample, key), value in samples.items()
        if sample == name and all(dict(key).get(k) == v for k, v in labels.items())
    }


def increase(before: Samples, after: Samples) -> Samples:
    """Each counter's increase between two scrapes of one replica; a counter that went down restarted from 0."""
    return {
        key: value - before.get(key, 0.0) if value >= before.get(key, 0.0) else value for key, value in after.items()
    }


class ScrapedFigures:
    """The fleet's figures from every replica's /metrics: each replica's increase over a window, summed."""

    def __init__(self, urls: Sequence[str]):
        self.clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
        self.marks: list[Samples] = []

    def mark(self) -> None:
        self.marks = [scrape(client) for client in self.clients]

    def window(self) -> Samples:
        total: Samples = defaultdict(float)
        for client, before in zip(self.clients, self.marks, strict=True):
            for key, value in increase(before, scrape(client)).items():
                total[key] += value
        return dict(total)


class PrometheusFigures:
    """The fleet's figures from Prometheus: `sum by (labels) (increase(series[window]))` over every replica it
    scrapes, read one scrape interval after the window ends (so that its last requests are scraped)."""

    def __init__(self, url: str, scrape_interval_s: float, wait: Callable[[float], None] = time.sleep):
        self.client, self.scrape_interval_s, self.wait = httpx.Client(base_url=url, timeout=30), scrape_interval_s, wait
        self.started = time.time()

    def mark(self) -> None:
        self.started = time.time()

    def query(self, promql: str) -> list[dict]:
        answer = self.client.get("/api/v1/query", params={"query": promql}).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {answer.get('error')}")
        return answer["data"]["result"]

    def window(self) -> Samples:
        self.wait(self.scrape_interval_s)
        seconds = max(math.ceil(time.time() - self.started), math.ceil(2 * self.scrape_interval_s))
        samples: Samples = {}
        for name, labels in ((JUDGED[0], "outcome"), (JUDGED[1], "le"), (COMPARED, "outcome")):
            promql = f"sum by (model, version, {labels}) (increase({name}[{seconds}s]))"
            for row in self.query(promql):
                samples[name, tuple(sorted(row["metric"].items()))] = float(row["value"][1])
        return samples


@dataclass
class VersionWindow:
    """One version's requests over an interval: by outcome, and its latency histogram."""

    outcomes: dict[str, float]
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count)

    @classmethod
    def of(cls, samples: Samples, model: str, version: str) -> VersionWindow:
        outcomes: dict[str, float] = defaultdict(float)
        for key, value in matching(samples, JUDGED[0], model=model, version=version).items():
            outcomes[dict(key)["outcome"]] += value
        counts = matching(samples, JUDGED[1], model=model, version=version)
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
    """The repository extension's traffic and load calls on one replica (or the load balancer)."""

    def __init__(self, url: str, token: str, timeout_s: float = 120):
        self.client = httpx.Client(base_url=url, timeout=timeout_s, headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        response = self.client.request(method, path, json=json)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def traffic(self, name: str, policy: dict | None = None) -> dict:
        path = f"/v2/repository/models/{name}/traffic"
        answer = self._call("POST", path, policy) if policy is not None else self._call("GET", path)
        for lagging in (answer.get("fleet") or {}).get("lagging", []):
            print(f"  replica {lagging['replica']} lags (generation {lagging['applied']}): {lagging['reason']}")
        return answer

    def load(self, name: str, version: str) -> None:
        self._call("POST", f"/v2/repository/models/{name}/load", {"parameters": {"version": version}})


Verdict = tuple[str, str]  # ("pass" | "fail" | "wait", why)


def shadow_verdict(samples: Samples, name: str, candidate: str, limits: Limits) -> Verdict:
    """The shadow phase's verdict on the candidate, and its figures."""
    compared = {
        dict(key)["outcome"]: value for key, value in matching(samples, COMPARED, model=name, version=candidate).items()
    }
    agree, disagree, errors = (compared.get(o, 0.0) for o in ("agree", "disagree", "error"))
    total = agree + disagree + errors
    if total < limits.min_requests:
        return (
            "wait",
            f"the shadow saw {total:.0f} inputs (--min-requests {limits.min_requests}): too little traffic to judge",
        )
    if errors / total > limits.max_error_ratio:
        return "fail", f"the shadow failed on {errors / total:.1%} of inputs (limit {limits.max_error_ratio:.1%})"
    disagreement = disagree / (agree + disagree) if agree + disagree else 1.0
    said = f"the candidate disagreed with the primary on {disagreement:.1%} of {total:.0f} inputs"
    if limits.max_disagreement is not None and disagreement > limits.max_disagreement:
        return "fail", f"{said} (limit {limits.max_disagreement:.1%})"
    return "pass", said + ("" if limits.max_disagreement is not None else " (not judged: --max-disagreement)")


def step_verdict(primary: VersionWindow, candidate: VersionWindow, limits: Limits) -> Verdict:
    """A canary step's verdict on the candidate, and its figures."""
    if candidate.requests < limits.min_requests:
        return "wait", (
            f"the candidate answered {candidate.requests:.0f} requests (--min-requests {limits.min_requests}): "
            "too little traffic to judge"
        )
    if candidate.error_ratio > max(limits.max_error_ratio, primary.error_ratio):
        return "fail", (
            f"the candidate's error ratio {candidate.error_ratio:.1%} is over the limit {limits.max_error_ratio:.1%} "
            f"and the primary's {primary.error_ratio:.1%}"
        )
    p99, base = candidate.quantile(0.99), primary.quantile(0.99)
    if base > 0 and p99 / base > limits.max_p99_ratio:
        return "fail", (
            f"the candidate's p99 {p99 * 1000:.1f} ms is {p99 / base:.2f}x the primary's {base * 1000:.1f} ms "
            f"(limit {limits.max_p99_ratio}x)"
        )
    return "pass", (
        f"{candidate.requests:.0f} requests, errors {candidate.error_ratio:.1%}, "
        f"p99 {p99 * 1000:.1f} ms (primary {base * 1000:.1f} ms)"
    )


class Rollout:
    """One candidate's rollout: each phase in the fleet's state, judged on the fleet's figures."""

    def __init__(self, server: Server, figures, name: str, limits: Limits, interval_s: float, wait=time.sleep):
        self.server, self.figures, self.name, self.limits = server, figures, name, limits
        self.interval_s, self.wait = interval_s, wait

    def judge(self, judge: Callable[[Samples], Verdict]) -> Verdict:
        """Wait one interval, then the verdict on the window; with too little traffic, wait longer (the window
        grows), up to `max_waits` intervals more."""
        self.figures.mark()
        for waited in range(self.limits.max_waits + 1):
            self.wait(self.interval_s)
            verdict, why = judge(self.figures.window())
            if verdict != "wait":
                return verdict, why
            print(f"  inconclusive: {why}; waiting another {self.interval_s:g} s ({waited + 1})", flush=True)
        raise Undecided(f"still too little traffic after {self.limits.max_waits} more intervals")

    def run(self, candidate: str, steps: list[float]) -> tuple[bool, str]:
        """(promoted, why); Undecided when it stops without a verdict."""
        primary, resumed = self.start(candidate)
        try:
            if resumed == 0:
                print(f"{self.name}: shadowing {candidate} beside {primary} for {self.interval_s:g} s", flush=True)
                self.server.traffic(self.name, {"split": {primary: 100}, "shadow": {"version": candidate}})
                verdict, why = self.judge(lambda samples: shadow_verdict(samples, self.name, candidate, self.limits))
                print(f"  {why}", flush=True)
                if verdict == "fail":
                    return self.rollback(primary, why)
            for weight in [w for w in steps if resumed <= w < 100]:
                print(f"{self.name}: {weight:g}% to {candidate} for {self.interval_s:g} s", flush=True)
                self.server.traffic(self.name, {"split": {primary: 100 - weight, candidate: weight}})
                verdict, why = self.judge(
                    lambda samples: step_verdict(
                        VersionWindow.of(samples, self.name, primary),
                        VersionWindow.of(samples, self.name, candidate),
                        self.limits,
                    )
                )
                print(f"  {why}", flush=True)
                if verdict == "fail":
                    return self.rollback(primary, why)
            self.server.load(self.name, candidate)
        except (RuntimeError, httpx.HTTPError) as exc:
            return self.rollback(primary, f"the server failed during the rollout: {exc}")
        return True, f"{candidate} promoted: it serves all of {self.name}'s traffic"

    def start(self, candidate: str) -> tuple[str, float]:
        """The primary, and the candidate's share to resume from (0: from the shadow phase)."""
        current = self.server.traffic(self.name)
        split, shadow = current["split"], current.get("shadow")
        others = [v for v in split if v != candidate]
        if set(split) == {candidate}:
            raise RuntimeError(f"{candidate} is already the version serving {self.name}")
        if len(others) != 1:
            raise RuntimeError(f"{self.name} has a policy in force already ({current}); load one version first")
        if candidate in split:  # a rollout of this candidate stopped at a step: resume there
            print(f"{self.name}: resuming at {split[candidate]:g}% to {candidate}", flush=True)
            return others[0], split[candidate]
        if shadow and shadow["version"] != candidate:
            raise RuntimeError(f"{self.name} shadows {shadow['version']} already; load one version first")
        return others[0], 0.0

    def rollback(self, primary: str, why: str) -> tuple[bool, str]:
        self.server.load(self.name, primary)
        return False, f"rolled back to {primary}: {why}"


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.rollout",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("name")
    parser.add_argument("version", help="the candidate: a stored version of NAME")
    figures = parser.add_mutually_exclusive_group()
    figures.add_argument("--prometheus", help="a Prometheus that scrapes every replica: the figures by PromQL")
    figures.add_argument(
        "--url", action="append", help="a replica whose /metrics is summed (once per replica; default :3000)"
    )
    parser.add_argument(
        "--admin", help="where the steps are set (any replica, or the load balancer; default the first --url)"
    )
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus' scrape interval, seconds")
    parser.add_argument("--steps", default="10,50,100", help="the candidate's shares in percent, comma-separated")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds each phase and step runs")
    for flag, kind, default, meaning in GATES:
        parser.add_argument(flag, type=kind, default=default, help=meaning)
    parser.add_argument("--rollback", action="store_true", help="end a stopped rollout: the primary alone again")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    token = os.environ.get("MODELROAD_ADMIN_TOKEN")
    if not token:
        print("set MODELROAD_ADMIN_TOKEN to the server's admin token", file=sys.stderr)
        return 2
    try:
        steps = [float(s) for s in args.steps.split(",")]
    except ValueError:
        print(f"--steps {args.steps!r}: write percentages, e.g. 10,50,100", file=sys.stderr)
        return 2
    urls = args.url or ["http://127.0.0.1:3000"]
    admin = args.admin or (urls[0] if not args.prometheus or args.url else None)
    if admin is None:
        print(
            "with --prometheus, --admin names where the steps are set (a replica or the load balancer)", file=sys.stderr
        )
        return 2
    limits = Limits(args.max_error_ratio, args.max_p99_ratio, args.max_disagreement, args.min_requests, args.max_waits)
    source = PrometheusFigures(args.prometheus, args.scrape_interval) if args.prometheus else ScrapedFigures(urls)
    rollout = Rollout(Server(admin, token), source, args.name, limits, args.interval)
    try:
        if args.rollback:
            primary, _ = rollout.start(args.version)
            promoted, why = rollout.rollback(primary, "asked (--rollback)")
        else:
            promoted, why = rollout.run(args.version, steps)
    except (Undecided, KeyboardInterrupt) as stopped:
        policy = rollout.server.traffic(args.name)
        print(
            f"stopped undecided ({stopped or 'Ctrl-C'}); in force for {args.name}: split {policy['split']}"
            f"{', shadow ' + policy['shadow']['version'] if policy.get('shadow') else ''}. The same command resumes;"
            " with --rollback it ends with the primary alone",
            flush=True,
        )
        return 3
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"cannot roll out: {exc}", file=sys.stderr)
        return 2
    print(why, flush=True)
    return 0 if promoted else 1


if __name__ == "__main__":
    sys.exit(main())
