#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: Debian packages and the venv. Idempotent and quick when nothing changed.
# Usage: scripts/setup.sh [serve|test]
#   serve: what serving and training the default models need (the datasets, torch, BentoML): `make serve`;
#   test (default): that, and the tests', the fleet's and the image's tools (Prometheus, HAProxy, wrk, podman, chromium; pytest, Locust,
#   the clients, selenium).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-test}"
apt_packages=(dataset-fashion-mnist wordnet-base fortunes-min)
extras="train"
if [ "$profile" = test ]; then
  apt_packages+=(prometheus haproxy wrk podman runc catatonit debootstrap chromium chromium-driver)
  extras="train,dev"
elif [ "$profile" != serve ]; then
  echo "setup: unknown profile '$profile' (serve or test)" >&2
  exit 2
fi

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
    echo "setup: missing Debian packages ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" >&2
  fi
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: $python is not Python 3.11 (torch 2.13.0's local wheel is for 3.11): set PYTHON=python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

# The stamp names the pyproject it installed and its extras: "test" after "serve" adds the dev extra, and
# "serve" after "test" has nothing to do.
stamp_prefix=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
installed=""
for stamp in "$stamp_prefix"-*; do
  [ -f "$stamp" ] && installed="${stamp#"$stamp_prefix"-}"
done
if [ "$installed" != "train_dev" ] && [ "$installed" != "${extras//,/_}" ]; then
  # torch first, pinned: anything that pulls an unpinned torch would fetch a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[${extras}]"
  rm -f .venv/.installed-*
  touch "$stamp_prefix-${extras//,/_}"
fi
echo "setup: ready (.venv, extras: ${extras})"
