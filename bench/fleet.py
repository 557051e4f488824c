"""The fleet's costs, side by side in one run, on the store of BENTOML_HOME (`deploy.fleet`'s replicas):

    python -m bench.fleet [--changes 20] [--seconds 5] [--rounds 3] [--connections 32]

1. How long a change takes to reach every worker of 3 replicas: the time of a traffic call (it answers once every
   live worker has applied it), median and max of `--changes` changes, alternating two splits.
2. /classify_image requests/s at c=32 on one replica, the fleet's state followed (the admin token set: every
   worker reads the document every 0.2 s and reports once a second) against not followed, rounds alternating.
3. /classify_image requests/s of 1, 2 and 3 replicas behind HAProxy, and of one replica without it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.run import family_requests, median_run, run_wrk
from deploy.fleet import Fleet, FleetConfig, running
from harness.servers import free_port, stop

TOKEN = "bench-fleet-token"
MODEL = "fashion-cnn"


def change_seconds(fleet: Fleet, changes: int) -> list[float]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = f"{fleet.url}/v2/repository/models/{MODEL}/traffic"
    (version,) = httpx.get(path, headers=auth, timeout=30).json()["served"][-1:]
    seconds = []
    for number in range(changes):
        policy = {"split": {version: 100}} if number % 2 else {"split": {version: 100}, "shadow": None}
        start = time.perf_counter()
        answer = httpx.post(path, json=policy, headers=auth, timeout=60)
        seconds.append(time.perf_counter() - start)
        progress = answer.json()["fleet"]
        if answer.status_code != 200 or progress["lagging"] or len(progress["applied"]) != len(fleet.processes):
            raise RuntimeError(f"change {number}: {answer.status_code} {answer.text[:300]}")
    return seconds


def rps(url: str, connections: int, seconds: int, rounds: int, scratch: Path) -> float:
    request = family_requests()["image"]
    run_wrk(url, request, connections, 1, scratch)  # warm-up
    runs = [run_wrk(url, request, connections, seconds, scratch) for _ in range(rounds)]
    rate, _, errors = median_run(runs)
    if errors:
        raise RuntimeError(f"{errors} answers not 2xx from {url}")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        # The bench's own fleet state, so that a user's stays as it was.
        store_state = {"MODELROAD_FLEET_STATE": str(scratch / "fleet-state")}
        config = FleetConfig(
            replicas=3, port=free_port(), prometheus_port=free_port(), admin_token=TOKEN, env=store_state
        )
        with running(config, scratch / "three") as fleet:
            seconds = change_seconds(fleet, args.changes)
            print(
                f"a change reaching every worker of 3 replicas: median {statistics.median(seconds) * 1000:.0f} ms, "
                f"max {max(seconds) * 1000:.0f} ms ({args.changes} changes)",
                flush=True,
            )
            through = {}
            for count in (3, 2, 1):
                while len(fleet.processes) > count:
                    stop(fleet.processes.pop(max(fleet.processes)))
                time.sleep(3)  # HAProxy's health checks take the stopped replicas out
                through[count] = rps(fleet.url, args.connections, args.seconds, args.rounds, scratch)
            alone = rps(fleet.replica_url(1), args.connections, args.seconds, args.rounds, scratch)
        for count, rate in sorted(through.items()):
            print(f"{count} replica(s) behind HAProxy, c={args.connections}: {rate:,.0f} requests/s", flush=True)
        print(f"1 replica without HAProxy: {alone:,.0f} requests/s (HAProxy's cost: {1 - through[1] / alone:.1%})")

        followed: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for follows in (True, False) if round_ % 2 == 0 else (False, True):
                one = FleetConfig(
                    replicas=1,
                    port=free_port(),
                    prometheus_port=free_port(),
                    admin_token=TOKEN if follows else "",
                    env=store_state,
                )
                with running(one, scratch / f"one-{round_}-{follows}") as fleet:
                    followed[follows].append(rps(fleet.replica_url(1), args.connections, args.seconds, 1, scratch))
        on, off = statistics.median(followed[True]), statistics.median(followed[False])
        print(
            f"one replica, c={args.connections}: state followed {on:,.0f}, not followed {off:,.0f} requests/s "
            f"(cost {1 - on / off:.1%}; medians of {args.rounds} alternating rounds)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
