"""The peers the benchmark measures the platform against, in their own venv (.venv-peers).

`ensure_venv()` builds it from requirements.txt on first use (~1.5 min here), so neither FastAPI
for the peer nor Ray is ever a dependency of the product.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-peers"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def ensure_venv() -> Path:
    """The peers' venv, created or brought up to date with requirements.txt; returns its bin folder."""
    stamp = VENV / f".installed-{hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q"]
        # torch first and pinned, as for the product: an unpinned torch would fetch a CUDA build.
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return VENV / "bin"
