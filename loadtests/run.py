"""Run the Locust scenarios headless for a bounded time; CSV and HTML reports; exit code = the gate.

python -m loadtests.run --host http://127.0.0.1:3000 --users 8 --duration 30s --p95-ms 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:3000")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=8)
    parser.add_argument("--duration", default="20s", help="Locust run time, e.g. 20s, 2m")
    parser.add_argument("--p95-ms", type=float, default=500, help="fail when p95 latency exceeds this")
    parser.add_argument("--max-failure-ratio", type=float, default=0.0)
    parser.add_argument("--out", default="results/loadtest", help="report prefix: PREFIX_stats.csv, PREFIX.html")
    parser.add_argument("--users-class", nargs="*", default=[], help="only these user classes (default: all)")
    parser.add_argument("--grpc", default="", help="HOST:PORT of the inference protocol's gRPC: adds GrpcUser")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LOADTEST_P95_MS": str(args.p95_ms),
        "LOADTEST_MAX_FAILURE_RATIO": str(args.max_failure_ratio),
        "LOADTEST_GRPC_ADDRESS": args.grpc,
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(Path(__file__).with_name("locustfile.py")),
        "--headless",
        "--host",
        args.host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.duration,
        "--stop-timeout",
        "5",
        "--csv",
        str(out),
        "--html",
        f"{out}.html",
        "--only-summary",
        *args.users_class,
    ]
    # Locust (gevent) runs in its own process, away from anything that imports bentoml or torch.
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
