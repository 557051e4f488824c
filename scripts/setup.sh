#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: system packages (datasets, OOD test texts, Prometheus, wrk, podman) and the venv.
# Idempotent and quick when nothing changed. Usage: scripts/setup.sh [extras], default "train,dev".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,dev}"
apt_packages=(dataset-fashion-mnist wordnet-base fortunes-min prometheus wrk podman runc catatonit debootstrap)

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "setup: missing Debian packages ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (training on the default data needs them)" >&2
  fi
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: $python is not Python 3.11 (torch 2.13.0's local wheel is for 3.11): set PYTHON=python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  # torch first, pinned: anything that pulls an unpinned torch would fetch a multi-GB CUDA build.
  if [[ "$extras" == *train* ]]; then
    .venv/bin/pip install -q torch==2.13.0
  fi
  .venv/bin/pip install -q -e ".[${extras}]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ready (.venv, extras: ${extras})"
