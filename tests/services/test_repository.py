"""The repository's moving parts without a server: shared state between workers, unloading that drains, version
policies (splits, sticky keys, shadows) and the shadow's isolation from the primary."""

import asyncio
import collections
import datetime
import os
import time

import numpy as np
import pytest

from services.errors import BadRequest, Conflict, NotFound
from services.inference import Choice, InferenceModel, ModelRepository
from services.metrics import SHADOW_COMPARISONS, VersionSeries
from services.repository import RepositoryAdmin, Served, ServedState
from services.traffic import Policy


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


def test_served_state_changes_under_a_lock_and_counts_live_followers(monkeypatch):
    monkeypatch.setenv("MODELROAD_REPOSITORY_STATE", "")  # restored after the test
    state = ServedState.of_server(["a:1"])
    assert os.environ["MODELROAD_REPOSITORY_STATE"] == str(state.folder)  # for the workers to inherit
    assert ServedState.of_server(["ignored:1"]).read() == Served(0, ["a:1"])  # a worker joins the first one's state

    def edit(served: Served) -> None:
        served.tags.append("b:1")
        served.policies["b"] = {"split": {"1": 100}}

    assert state.change(edit) == 1
    assert state.read() == Served(1, ["a:1", "b:1"], {"b": {"split": {"1": 100}}})
    state.acknowledge(1)
    (state.folder / "worker-999999999").write_text("1")  # a worker that died
    assert (state.followers(1), state.followers(2)) == (1, 0)


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


def admin_of(repository: ModelRepository, tags: list[str], families: tuple[str, ...] = ()) -> RepositoryAdmin:
    state = ServedState.of_server(tags)
    return RepositoryAdmin(repository, state, lambda tag: [stored_model(*tag.split(":"), 9)], 1, 5, families)


def test_unload_waits_for_requests_in_flight_and_refuses_a_family_model(monkeypatch):
    monkeypatch.setenv("MODELROAD_REPOSITORY_STATE", "")  # restored after the test
    busy, family = stored_model("busy", "1", 1), stored_model("family", "1", 1)
    repository = ModelRepository([busy, family])
    admin = admin_of(repository, [busy.tag, family.tag], families=("family",))

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


def test_a_policy_serves_its_versions_and_load_ends_it(monkeypatch):
    monkeypatch.setenv("MODELROAD_REPOSITORY_STATE", "")
    monkeypatch.setattr("services.repository.stored_tag", lambda name, version: f"{name}:{version or 'v3'}")
    repository = ModelRepository([stored_model("m", "v1", 1)])
    admin = admin_of(repository, ["m:v1"])

    async def scenario() -> tuple[dict, dict, list[str]]:
        split = await admin.set_traffic("m", Policy.parse({"split": {"v1": 80, "v2": 20}}))
        loaded = await admin.load("m", "v1")  # the rollback: v1 alone, the split ended
        return split, admin.traffic("m"), loaded

    split, after, loaded = asyncio.run(scenario())
    assert split == {"name": "m", "split": {"v1": 80.0, "v2": 20.0}, "served": ["v1", "v2"]}
    assert after == {"name": "m", "split": {"v1": 100.0}, "served": ["v1"]} and loaded == ["v1"]
    assert admin.state.read().policies == {} and repository.policies == {}


def test_a_versions_requests_are_counted_by_outcome_a_refused_input_apart_from_a_failure():
    from contracts.preprocessing import InvalidInput
    from services.metrics import VERSION_REQUESTS

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
