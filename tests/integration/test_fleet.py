"""A fleet on one machine (`deploy.fleet`): real `bentoml serve` replicas on one store behind a real HAProxy, with a
real Prometheus scraping each, traffic through the load balancer. The fleet's state holds across replicas and
restarts: a split set through the balancer is every replica's, a restarted or added replica joins the generation in
force, changes are compare-and-set, and `deploy.rollout --prometheus` judges a candidate on every replica's figures.

The models live in a copy of the session's store, so that no other test's server meets them.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.fleet import REPLICA_HEADER, FleetConfig, running
from harness.servers import free_port
from tests.integration.conftest import ROOT
from tests.integration.test_rollout import IMPORT, Load, in_store
from tests.training.test_import import scale_graph, write

pytestmark = pytest.mark.slow

TOKEN = "fleet-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = [5.0, 5.0, 5.0]


def failing_graph() -> onnx.ModelProto:
    """y = table[int(x)]: answers the warm-up's zeros, fails on real inputs (an index out of the table)."""
    table = numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "table")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "i"], ["y"]),
        ],
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [table],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def store(registered, session_dir) -> tuple[Path, dict[str, str]]:
    """A store of its own with `fleet` in three versions: 2x, 3x (healthy, answers otherwise), failing."""
    home = session_dir / "fleet-store"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models", home / "models")
    folder = session_dir / "fleet-graphs"
    graphs = {"v1": scale_graph(2.0), "v2": scale_graph(3.0), "bad": failing_graph()}
    ids = {
        role: in_store(home, "-c", IMPORT.replace("'rollout'", "'fleet'"), str(write(g, folder / f"{role}.onnx")))
        for role, g in graphs.items()
    }
    return home, {role: tag.split(":")[-1] for role, tag in ids.items()}


@pytest.fixture(scope="module")
def fleet(store, session_dir):
    home, ids = store
    config = FleetConfig(
        replicas=2,
        slots=3,
        port=free_port(),
        prometheus_port=free_port(),
        scrape_interval_s=1,
        store=home,
        admin_token=TOKEN,
        env={"MODELROAD_MODELS": f"fleet:{ids['v1']}", "MODELROAD_GENERATION_MODEL": "", "MODELROAD_GAN_MODEL": ""},
    )
    folder = session_dir / "fleet-run"
    folder.mkdir()
    with running(config, folder) as started:
        yield started


def infer(url: str, client: httpx.Client | None = None, **headers: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": X}]}
    return (client or httpx).post(f"{url}/v2/models/fleet/infer", json=body, headers=headers, timeout=30)


def version_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-model-version"].split(":")[1]


def policy(url: str) -> dict:
    answer = httpx.get(f"{url}/v2/repository/models/fleet/traffic", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return {k: v for k, v in answer.json().items() if k != "fleet"}


def set_policy(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v2/repository/models/fleet/traffic", json=body, headers=AUTH, timeout=120)


def traffic(url: str) -> Load:
    """Requests through the balancer from 4 threads until the block ends, each on a new connection."""
    return Load(*[lambda: infer(url)] * 4)


def test_a_split_set_through_the_balancer_is_every_replicas_and_a_routing_key_sticks_fleet_wide(fleet, store):
    _, ids = store
    generation = policy(fleet.url)["generation"]
    answer = set_policy(fleet.url, {"split": {ids["v1"]: 50, ids["v2"]: 50}, "generation": generation})
    assert answer.status_code == 200, answer.text
    progress = answer.json()["fleet"]
    assert progress["applied"] == ["replica-1", "replica-2"] and progress["lagging"] == []
    in_force = policy(fleet.replica_url(1))
    assert in_force == policy(fleet.replica_url(2)) and in_force["generation"] == progress["generation"]

    def send(_: int) -> list[tuple[str, str]]:
        with httpx.Client() as client:
            return [(version_of(r := infer(fleet.url, client)), r.headers[REPLICA_HEADER]) for _ in range(375)]

    with ThreadPoolExecutor(8) as pool:
        answered = [pair for batch in pool.map(send, range(8)) for pair in batch]
    share = collections.Counter(version for version, _ in answered)[ids["v2"]] / len(answered)
    assert len(answered) == 3000 and abs(share - 0.5) <= 0.03, f"v2 answered {share:.1%} of 3,000 requests"
    by_replica = collections.defaultdict(set)
    for version, replica in answered:
        by_replica[replica].add(version)
    assert by_replica == {"replica-1": {ids["v1"], ids["v2"]}, "replica-2": {ids["v1"], ids["v2"]}}

    for key in "abcde":
        seen = {
            (version_of(r := infer(fleet.url, **{"X-Routing-Key": key})), r.headers[REPLICA_HEADER]) for _ in range(8)
        }
        assert len({version for version, _ in seen}) == 1 and len({replica for _, replica in seen}) == 2, seen


def test_changes_are_compare_and_set_and_a_bad_one_changes_nothing(fleet, store):
    _, ids = store
    before = policy(fleet.url)
    bodies = [
        {"split": {ids["v1"]: share, ids["v2"]: 100 - share}, "generation": before["generation"]} for share in (30, 70)
    ]
    with ThreadPoolExecutor(2) as pool:  # at once, one through each replica
        answers = list(pool.map(set_policy, [fleet.replica_url(1), fleet.replica_url(2)], bodies))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    (refused,) = [a for a in answers if a.status_code == 409]
    assert refused.json()["generation"] == before["generation"] + 1 and "based on generation" in refused.json()["error"]
    after = policy(fleet.url)
    assert after["generation"] == before["generation"] + 1
    assert after["split"] in ({ids["v1"]: 30.0, ids["v2"]: 70.0}, {ids["v1"]: 70.0, ids["v2"]: 30.0})

    stale = set_policy(fleet.url, {"split": {ids["v1"]: 100}, "generation": before["generation"]})
    absent = set_policy(fleet.url, {"split": {"nosuchversion": 100}})
    assert (stale.status_code, stale.json()["generation"]) == (409, after["generation"])
    assert absent.status_code == 400 and "a version the store lacks" in absent.json()["error"]
    assert policy(fleet.replica_url(1)) == policy(fleet.replica_url(2)) == after, "a refused change changed something"


def test_a_replica_stopped_and_started_again_serves_the_policy_in_force(fleet):
    in_force = policy(fleet.url)
    with traffic(fleet.url) as flowing:
        fleet.signal_replica(2, signal.SIGTERM)
        time.sleep(1)
        fleet.start_replica(2)
        time.sleep(0.5)
    assert policy(fleet.replica_url(2)) == in_force
    ready = httpx.get(f"{fleet.replica_url(2)}/readyz", timeout=10).json()["generation"]
    assert ready["applied"] == ready["desired"] == in_force["generation"] and ready["problem"] is None
    assert flowing.seen and flowing.failed() == [], "a request failed while a replica drained and restarted"


def test_an_onnx_file_imported_into_the_fleets_store_serves_on_every_replica(fleet, store, session_dir):
    home, _ = store
    path = write(scale_graph(5.0), session_dir / "fleet-graphs" / "imported.onnx")
    tag = in_store(home, "-c", IMPORT.replace("'rollout'", "'fleet-import'"), str(path))
    loaded = httpx.post(f"{fleet.url}/v2/repository/models/fleet-import/load", json={}, headers=AUTH, timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["fleet"]["applied"] == ["replica-1", "replica-2"]
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    for number in (1, 2):
        answer = httpx.post(f"{fleet.replica_url(number)}/v2/models/fleet-import/infer", json=body, timeout=30)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [5.0, 10.0, 15.0], answer.text
        assert answer.json()["model_version"] == tag.split(":")[1]


def rollout(fleet, version: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deploy.rollout", "fleet", version, "--prometheus", fleet.prometheus_url]
    command += [
        "--admin",
        fleet.url,
        "--scrape-interval",
        "1",
        "--min-requests",
        "20",
        "--max-p99-ratio",
        "5",
        *options,
    ]
    env = {**os.environ, "MODELROAD_ADMIN_TOKEN": TOKEN}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_prometheus_judged_rollouts_on_the_fleet_while_a_replica_joins_and_another_is_killed(fleet, store):
    _, ids = store
    assert (
        httpx.post(
            f"{fleet.url}/v2/repository/models/fleet/load",
            json={"parameters": {"version": ids["v1"]}},
            headers=AUTH,
            timeout=120,
        ).status_code
        == 200
    )
    with traffic(fleet.url) as flowing:
        bad = rollout(fleet, ids["bad"], "--steps", "50,100", "--interval", "3")
        after_bad = policy(fleet.url)

        joined: dict = {}

        def join_then_kill() -> None:
            time.sleep(2)
            fleet.start_replica(3)  # in the middle of the rollout
            joined["ready"] = httpx.get(f"{fleet.replica_url(3)}/readyz", timeout=10).json()["generation"]
            joined["policy"], joined["fleet"] = policy(fleet.replica_url(3)), policy(fleet.url)
            fleet.signal_replica(1, signal.SIGKILL)

        changes = threading.Thread(target=join_then_kill)
        changes.start()
        good = rollout(fleet, ids["v2"], "--steps", "20,40,60,80,100", "--interval", "4")
        changes.join()
        after_good = policy(fleet.url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"rolled back to {ids['v1']}" in bad.stdout and "the shadow failed on 100.0%" in bad.stdout
    assert after_bad["split"] == {ids["v1"]: 100.0}
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"{ids['v2']} promoted" in good.stdout and after_good["split"] == {ids["v2"]: 100.0}
    assert joined["ready"]["applied"] == joined["ready"]["desired"] and joined["ready"]["problem"] is None
    assert joined["policy"]["generation"] >= joined["fleet"]["generation"] - 1  # one step may land in between
    failed = collections.Counter(flowing.failed())
    print(f"requests through HAProxy during the rollouts: {len(flowing.seen)}, failed: {sum(failed.values())} {failed}")
    assert flowing.failed() == [], "a request failed though HAProxy retries a killed replica's on another"
