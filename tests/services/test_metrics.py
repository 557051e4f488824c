"""The workers' multiprocess values (services/ops/metrics.py): prometheus_client's memory-mapped values with the pid
kept in memory, not asked of the OS at every update, and read again after a fork. Run in a child Python with
PROMETHEUS_MULTIPROC_DIR set, as a worker is."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
