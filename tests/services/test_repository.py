"""The repository's moving parts without a server: shared state between workers, unloading that drains, version
policies (splits, sticky keys, shadows) and the shadow's isolation from the primary."""

import asyncio
import collections
import datetime
import json
import logging
import time

import numpy as np
import pytest

from services.dataplane.admin import RepositoryAdmin
from services.dataplane.desired import (
    DesiredState,
    Served,
    StaleGeneration,
    UnreadableState,
    WorkerReport,
    fleet_report,
)
from services.dataplane.models import Choice, InferenceModel, ModelRepository
from services.dataplane.traffic import Policy
from services.errors import BadRequest, Conflict, NotFound
from services.ops.metrics import SHADOW_COMPARISONS, VersionSeries


class StubRunner:
    """What the repository touches of a runner: its names, creation time, readiness, series and close()."""

    def __init__(self, name: str, version: str, day: int):
        self.name, self.version, self.tag = name, version, f"{name}:{version}"
        self.created = datetime.datetime(2026, 1, day)
        self.warmed, self.closed = True, False
        self.series = VersionSeries(name, version)

    def close(self) -> None:
        self.warmed, self.closed = False, True


def stored_model(name: str, version: str, day: int) -> InferenceModel:
    return InferenceModel(name, StubRunner(name, version, day), [], [])


class Scaling(InferenceModel):
    """A version that multiplies its input, after `delay_s`, or raises when `fails`."""

    def __init__(self, version: str, day: int, factor: float, delay_s: float = 0.0, fails: bool = False):
        super().__init__("m", StubRunner("m", version, day), [], [])
        self.factor, self.delay_s, self.fails = factor, delay_s, fails

    def problem(self, tensors: dict[str, np.ndarray]) -> None:
        return None

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        await asyncio.sleep(self.delay_s)
        if self.fails:
            raise RuntimeError("the shadow's graph failed")
        return {"y": tensors["x"] * self.factor}


def test_the_fleet_state_is_kept_changed_by_compare_and_set_and_reports_live_workers(tmp_path):
    state = DesiredState.at(tmp_path, ["a:1"])
    assert DesiredState.at(tmp_path, ["ignored:1"]).read() == Served(1, ["a:1"])  # a restart keeps the state

    def edit(served: Served) -> None:
        served.tags.append("b:1")
        served.policies["b"] = {"split": {"1": 100}}

    assert state.change(edit, based_on=1) == 2
    with pytest.raises(StaleGeneration) as stale:
        state.change(lambda served: served.tags.clear(), based_on=1)  # based on what someone else changed
    assert stale.value.status == 409 and stale.value.fields == {"generation": 2}
    assert state.read() == Served(2, ["a:1", "b:1"], {"b": {"split": {"1": 100}}}), "a refused change was applied"
    assert state.change(lambda served: None) == 3  # no base: the latest

    state.report(WorkerReport("r1", 1, applied=3, desired=3))
    state.report(WorkerReport("r2", 2, applied=2, desired=3, problem="b:1 cannot be loaded"))
    state.report(WorkerReport("r2", 3, applied=3, desired=3))
    gone = WorkerReport("r3", 4, applied=1, desired=1)
    state.report(gone)
    gone_file = state.workers / "r3.4.json"
    gone_file.write_text(json.dumps({**json.loads(gone_file.read_text()), "seen": time.time() - 60}))  # killed
    assert [r.name for r in state.reports()] == ["r1/1", "r2/2", "r2/3"]
    assert fleet_report(state.reports(), 3) == {
        "generation": 3,
        "applied": ["r1"],
        "lagging": [{"replica": "r2", "applied": 2, "reason": "b:1 cannot be loaded"}],
    }


@pytest.mark.parametrize(
    "text", ["{", '{"generation": 2}', '{"generation": "x", "tags": []}', '{"generation": 3, "tags": [7]}']
)
def test_a_document_that_is_not_a_state_is_unreadable_and_a_change_on_it_refused(tmp_path, text):
    state = DesiredState.at(tmp_path, ["a:1"])
    state.file.write_text(text)
    with pytest.raises(UnreadableState):
        state.read()
    with pytest.raises(Conflict, match="fix or remove it first"):
        state.change(lambda served: None)


def test_latest_is_the_most_recently_created_version_whatever_the_order_of_loading():
    repository = ModelRepository([stored_model("m", "new", 2), stored_model("m", "old", 1)])
    assert repository.get("m").version == "new" and list(repository.versions["m"]) == ["old", "new"]
    assert repository.choose("m").primary.version == "new"  # no policy: the latest answers
    with pytest.raises(NotFound):
        repository.get("m", "gone")


def test_a_split_shares_requests_by_weight_and_a_routing_key_sticks_to_one_version():
    policy = Policy.parse({"split": {"a": 90, "b": 10}})
    shares = collections.Counter(policy.choose(None) for _ in range(5000))
    assert abs(shares["b"] / 5000 - 0.10) < 0.02
    by_key = {key: policy.choose(key) for key in map(str, range(2000))}
    assert all(policy.choose(key) == version for key, version in by_key.items())  # sticky
    assert abs(collections.Counter(by_key.values())["b"] / 2000 - 0.10) < 0.03  # keys spread by weight too
    assert Policy.parse({"split": {"a": 100, "b": 0}}).split == {"a": 100.0}  # a zero weight is no version


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"split": {"a": 90, "b": 20}}, "sum to 100; they sum to 110"),
        ({"split": {}}, "one or more versions"),
        ({"split": {"a": "50", "b": 50}}, "weights from 0 to 100"),
        ({"split": {"a": 100}, "shadow": {"version": "a"}}, "a shadow must be another version"),
        ({"split": {"a": 100}, "shadow": {"version": "b", "percent": 150}}, "from 0 to 100"),
        ({"split": {"a": 100}, "mirror": {}}, "a traffic policy is"),
        ([1, 2], "a traffic policy is"),
    ],
)
def test_a_bad_policy_is_refused_saying_why(body, reason):
    with pytest.raises(BadRequest, match=reason):
        Policy.parse(body)


def test_a_slow_or_failing_shadow_neither_slows_nor_fails_the_primary_and_is_counted():
    primary = Scaling("1", 1, 2.0)
    slow, failing, copy = Scaling("2", 2, 3.0, delay_s=0.2), Scaling("3", 3, 2.0, fails=True), Scaling("4", 4, 2.0)

    def outcomes(version: str) -> dict[str, float]:
        return {o: SHADOW_COMPARISONS.labels("m", version, o)._value.get() for o in ("agree", "disagree", "error")}

    async def request(shadow: InferenceModel) -> float:
        """One request answered by the primary with a copy to `shadow`: the seconds to its answer."""
        start = time.perf_counter()
        choice = Choice(primary, shadow)
        inputs = {"x": np.ones((2, 3), np.float32)}
        with choice.answering():
            outputs = await primary.infer(inputs)
        choice.mirror(lambda: inputs, lambda: outputs)
        return time.perf_counter() - start

    async def scenario() -> list[float]:
        seconds = [await request(shadow) for shadow in (slow, failing, copy)]
        await asyncio.sleep(0.3)  # the slow shadow finishes after its request was answered
        return seconds

    before = {v: outcomes(v) for v in ("2", "3", "4")}
    seconds = asyncio.run(scenario())
    assert max(seconds) < 0.05, "a request waited for its shadow"
    counted = {v: {o: outcomes(v)[o] - before[v][o] for o in before[v]} for v in before}
    assert counted == {
        "2": {"agree": 0, "disagree": 2, "error": 0},
        "3": {"agree": 0, "disagree": 0, "error": 1},
        "4": {"agree": 2, "disagree": 0, "error": 0},
    }


def admin_of(
    repository: ModelRepository, tags: list[str], folder, families: tuple[str, ...] = (), open_model=None
) -> RepositoryAdmin:
    state = DesiredState.at(folder, tags)
    opener = open_model or (lambda tag: [stored_model(*tag.split(":"), 9)])
    return RepositoryAdmin(repository, state, opener, 1, 5, families)


def test_unload_waits_for_requests_in_flight_and_refuses_a_family_model(tmp_path):
    busy, family = stored_model("busy", "1", 1), stored_model("family", "1", 1)
    repository = ModelRepository([busy, family])
    admin = admin_of(repository, [busy.tag, family.tag], tmp_path, families=("family",))

    async def scenario() -> list[str]:
        events, release = [], asyncio.Event()

        async def request() -> None:
            with busy.serving():
                await release.wait()
                events.append(f"answered, closed={busy.runner.closed}")

        in_flight = asyncio.create_task(request())
        await asyncio.sleep(0)
        unloading = asyncio.create_task(admin.unload("busy"))
        await asyncio.sleep(0.05)
        events.append(f"unloading, findable={'busy' in repository.versions}, closed={busy.runner.closed}")
        release.set()
        await asyncio.gather(in_flight, unloading)
        events.append(f"unloaded, closed={busy.runner.closed}")
        with pytest.raises(Conflict, match="load another version instead"):
            await admin.unload("family")
        return events

    assert asyncio.run(scenario()) == [
        "unloading, findable=False, closed=False",
        "answered, closed=False",
        "unloaded, closed=True",
    ]
    assert admin.state.read().tags == [family.tag] and admin.caught_up()


def test_a_policy_serves_its_versions_and_load_ends_it(monkeypatch, tmp_path):
    monkeypatch.setattr("services.dataplane.admin.stored_tag", lambda name, version: f"{name}:{version or 'v3'}")
    repository = ModelRepository([stored_model("m", "v1", 1)])
    admin = admin_of(repository, ["m:v1"], tmp_path)

    async def scenario() -> tuple[dict, dict, dict]:
        admin.start_following()
        while not admin.caught_up():
            await asyncio.sleep(0.01)
        split = await admin.set_traffic("m", Policy.parse({"split": {"v1": 80, "v2": 20}}), based_on=1)
        loaded = await admin.load("m", "v1")  # the rollback: v1 alone, the split ended
        return split, admin.traffic("m"), loaded

    split, after, loaded = asyncio.run(scenario())
    replica = admin.replica
    assert split == {
        "name": "m",
        "split": {"v1": 80.0, "v2": 20.0},
        "served": ["v1", "v2"],
        "generation": 2,
        "fleet": {"generation": 2, "applied": [replica], "lagging": []},
    }
    assert after == {"name": "m", "split": {"v1": 100.0}, "served": ["v1"], "generation": 3}
    assert loaded == {"name": "m", "versions": ["v1"], "fleet": {"generation": 3, "applied": [replica], "lagging": []}}
    assert admin.state.read().policies == {} and repository.policies == {}


def test_a_worker_keeps_its_last_good_state_when_a_generation_cannot_be_applied_or_read(tmp_path, caplog):
    """A version its store lacks, then a hand-edited document: the worker serves what it served, says why once in
    its log, in its report and in readiness, and applies the next good generation."""

    def open_model(tag: str) -> list[InferenceModel]:
        if tag == "m:missing":
            raise FileNotFoundError("no such version in this store")
        return [stored_model(*tag.split(":"), 9)]

    repository = ModelRepository([stored_model("m", "v1", 1)])
    admin = admin_of(repository, ["m:v1"], tmp_path, open_model=open_model)

    async def follow_for(seconds: float) -> None:
        admin.start_following()
        await asyncio.sleep(seconds)
        admin._follower.cancel()

    asyncio.run(follow_for(0.3))
    assert admin.caught_up() and admin.applied == 1

    def missing(served: Served) -> None:
        served.tags = ["m:missing"]

    admin.state.change(missing)
    with caplog.at_level(logging.ERROR, logger="services.dataplane.admin"):
        asyncio.run(follow_for(0.6))
    assert list(repository.versions["m"]) == ["v1"], "a generation that cannot be applied changed something"
    problem = "m:missing cannot be loaded: no such version in this store"
    assert not admin.caught_up() and admin.progress()["problem"] == problem
    assert len([r for r in caplog.records if "not applied" in r.getMessage()]) == 1, "one line, not one a poll"
    (report,) = admin.state.reports()
    assert (report.applied, report.desired, report.problem) == (1, 2, admin.refused)

    admin.state.change(lambda served: setattr(served, "tags", ["m:v1", "m:v2"]))
    admin.state.file.write_text('{"generation": 4, "tags": "half')  # a hand edit gone wrong
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="services.dataplane.admin"):
        asyncio.run(follow_for(0.6))
    assert list(repository.versions["m"]) == ["v1"] and admin.applied == 1
    assert str(admin.state.file) in caplog.records[0].getMessage() and len(caplog.records) == 1
    assert "not a state document" in admin.progress()["problem"]

    admin.state.file.write_text(json.dumps({"generation": 4, "tags": ["m:v1", "m:v2"], "policies": {}}))
    asyncio.run(follow_for(0.3))
    assert list(repository.versions["m"]) == ["v1", "v2"] and admin.applied == 4 and admin.caught_up()
    assert admin.progress()["problem"] is None


def test_a_versions_requests_are_counted_by_outcome_a_refused_input_apart_from_a_failure():
    from contracts.preprocessing import InvalidInput
    from services.ops.metrics import VERSION_REQUESTS

    model = stored_model("counted", "1", 1)

    def count(outcome: str) -> float:
        return VERSION_REQUESTS.labels("counted", "1", outcome)._value.get()

    for raised in (None, BadRequest("bad"), InvalidInput("not an image"), RuntimeError("the graph failed")):
        try:
            with Choice(model).answering():
                if raised:
                    raise raised
        except (BadRequest, InvalidInput, RuntimeError):
            pass
    assert (count("ok"), count("invalid"), count("error")) == (1, 2, 1)
    assert model.in_flight == 0
