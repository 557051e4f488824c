# The two commands a newcomer needs: `make serve` and `make test`. Everything else is optional.
SHELL := /bin/bash
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 3000
export BENTOML_DO_NOT_TRACK := true

.PHONY: setup serve fleet train test test-fast loadtest soak bench bento image pod pod-down lint

setup:
	@scripts/setup.sh test

## Serve every family on $(HOST):$(PORT), training first the default models the store lacks: each family
## answers as soon as its model is registered (the others say how far their training is).
serve:
	@scripts/setup.sh serve
	$(PY) -m training serve --host $(HOST) --port $(PORT)

## A fleet on one machine: REPLICAS replicas of the platform on one store behind HAProxy on $(HOST):$(PORT), a
## Prometheus on :9090 scraping each (docs/fleet.md); the store's models (make serve or make train first).
REPLICAS ?= 3
fleet: setup
	$(PY) -m deploy.fleet --replicas $(REPLICAS) --port $(PORT)

## Train (or re-train) the default models and register them: make train TASKS="fashion-cnn"
TASKS ?= fashion-cnn
train:
	@scripts/setup.sh serve
	$(PY) -m training train $(TASKS)

## The whole suite (unit, in-process service, real `bentoml serve`, bentoml build); the 25 slowest listed at the end.
test: setup
	$(PY) -m pytest -q --durations=25

## Only the fast tests (no servers, no training runs).
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not container"

## Locust against a running server: make loadtest URL=http://127.0.0.1:3000
## Any model by the inference protocol (a concurrency sweep, figures per step): make loadtest MODEL=fashion-cnn
URL ?= http://$(HOST):$(PORT)
MODEL ?=
loadtest: setup
	$(if $(MODEL),$(PY) -m loadtests.infer $(URL) --model $(MODEL),$(PY) -m loadtests.run --host $(URL))

## 10 minutes of mixed Locust load at 70% of the capacity it measures first, against its own server
## on a free loopback port: RSS, descriptors, p50/p99 and non-2xx per minute, and a verdict (~11 min).
soak: setup
	$(PY) -m loadtests.soak --minutes 10

## wrk against the platform (batched and not, and overloaded), its floors (no-op BentoML, bare Starlette, ONNX Runtime and PyTorch eager alone) and the peers (~20 min).
bench: setup
	$(PY) -m bench

bento: setup
	.venv/bin/bentoml build

## The serving image with podman (root the first time: debootstrap makes the base), then a smoke check.
## VARIANT=gpu builds the CUDA variant; ENGINE=docker uses Docker.
VARIANT ?= cpu
ENGINE ?= podman
image: setup
	$(PY) -m deploy.image build --variant $(VARIANT) --engine $(ENGINE) --check

## The service beside Prometheus in one pod on 127.0.0.1:3000 and :9090 (after `make image`).
pod: setup
	$(PY) -m deploy.image prometheus
	CONTAINERS_CONF=deploy/container/containers.conf podman play kube --replace deploy/podman/modelroad-pod.yaml

pod-down:
	CONTAINERS_CONF=deploy/container/containers.conf podman play kube --down deploy/podman/modelroad-pod.yaml

## The linter and the format check (rules in pyproject.toml); .ci/run runs it before the tests.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
