"""What OOD scoring costs a route: wrk at `--connections` against a server with scores on, then the same
server with `MODELROAD_OOD_SCORES=false` (the graphs' scoring nodes not run, no verdicts), one after the other.

Printed: requests/s of each route with and without scores, and the cost as a share of the route's
requests/s (the target: at most 25% at c=32). `python -m bench.ood` (~2 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.run import PAYLOADS, Request, family_requests, run_wrk
from harness.servers import free_port, served


def requests() -> dict[str, Request]:
    texts = json.loads((PAYLOADS / "texts.json").read_text())[:32]
    return {
        **family_requests(),
        "texts (32)": Request("/classify_texts", "application/json", json.dumps({"texts": texts}).encode()),
    }


def throughput(scores: bool, routes: dict[str, Request], connections: int, seconds: int, scratch: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "services.platform:Platform", "--port", str(port)]
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
    args = parser.parse_args(argv)
    routes = requests()
    with tempfile.TemporaryDirectory() as scratch:
        on = throughput(True, routes, args.connections, args.seconds, Path(scratch))
        off = throughput(False, routes, args.connections, args.seconds, Path(scratch))
    print(f"wrk c={args.connections}, {args.seconds} s per route, one server after the other")
    print(f"{'route':28} {'scores on':>10} {'scores off':>11} {'cost':>7}")
    for name, request in routes.items():
        label = f"{request.route} {name}"
        print(f"{label:28} {on[name]:>10,.0f} {off[name]:>11,.0f} {1 - on[name] / off[name]:>7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
