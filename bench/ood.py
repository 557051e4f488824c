"""What OOD scoring costs a route: wrk at `--connections` against a server with scores on and the same
server with `MODELROAD_OOD_SCORES=false` (the graphs' scoring nodes not run, no verdicts), one after the other,
in `--pairs` pairs whose order alternates (on/off, off/on, ...) so that a drift of the machine cancels out.

Printed: each pair's cost per route (1 - on/off requests/s) and their median (the target: at most 10% at
c=32). `python -m bench.ood` (~4 min with 3 pairs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.run import PAYLOADS, Request, family_requests, run_wrk
from harness.servers import free_port, serve_command, served


def requests() -> dict[str, Request]:
    texts = json.loads((PAYLOADS / "texts.json").read_text())[:32]
    return {
        **family_requests(),
        "texts (32)": Request("/classify_texts", "application/json", json.dumps({"texts": texts}).encode()),
    }


def throughput(scores: bool, routes: dict[str, Request], connections: int, seconds: int, scratch: Path) -> dict:
    port = free_port()
    command = serve_command(port)
    env = {"MODELROAD_OOD_SCORES": str(scores).lower()}
    with served(command, port, env, scratch / f"server-{scores}.log", Path.cwd()) as url:
        results = {}
        for name, request in routes.items():
            run_wrk(url, request, connections, 1, scratch)  # warm-up
            rps, _, errors = run_wrk(url, request, connections, seconds, scratch)
            if errors:
                raise RuntimeError(f"{name}: {errors} answers not 2xx with scores {'on' if scores else 'off'}")
            results[name] = rps
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3, help="on/off pairs, their order alternating")
    args = parser.parse_args(argv)
    routes = requests()
    costs: dict[str, list[float]] = {name: [] for name in routes}
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(args.pairs):
            measured = {}
            for scores in (True, False) if pair % 2 == 0 else (False, True):
                measured[scores] = throughput(scores, routes, args.connections, args.seconds, Path(scratch))
            for name in routes:
                costs[name].append(1 - measured[True][name] / measured[False][name])
                print(f"pair {pair + 1} {name}: on {measured[True][name]:,.0f}, off {measured[False][name]:,.0f}")
    print(f"wrk c={args.connections}, {args.seconds} s per route, {args.pairs} pairs of servers in alternating order")
    print(f"{'route':28} {'median cost':>12}  each pair's")
    for name, request in routes.items():
        label = f"{request.route} {name}"
        each = ", ".join(f"{cost:.1%}" for cost in costs[name])
        print(f"{label:28} {statistics.median(costs[name]):>12.1%}  {each}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
