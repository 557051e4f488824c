"""The peers the benchmark measures the platform against, each group in a venv of its own.

`ensure_venv(name)` builds `.venv-<name>` from `requirements-<name>.txt` on first use (about 1.5 min
each here), so neither the peers' frameworks nor their pins are ever dependencies of the product:
- `peers`: FastAPI with PyTorch eager, and Ray Serve;
- `kserve`, `mlserver`: the Open Inference Protocol servers (their FastAPI pins conflict with each other).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


def venv(name: str) -> Path:
    return ROOT / f".venv-{name}"


def ensure_venv(name: str = "peers") -> Path:
    """The venv, created or brought up to date with its requirements file; returns its bin folder."""
    folder, requirements = venv(name), HERE / f"requirements-{name}.txt"
    stamp = folder / f".installed-{hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        if not (folder / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(folder / "bin" / "pip"), "install", "-q"]
        if "torch==" in requirements.read_text():
            # torch first and pinned, as for the product: an unpinned torch would fetch a CUDA build.
            subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        for old in folder.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return folder / "bin"
