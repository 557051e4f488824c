"""The repository's moving parts without a server: shared state between workers, and unloading that drains."""

import asyncio
import datetime
import os

import pytest

from services.errors import Conflict, NotFound
from services.inference import InferenceModel, ModelRepository
from services.repository import RepositoryAdmin, ServedState


class StubRunner:
    """What the repository touches of a runner: its version, creation time, readiness and close()."""

    def __init__(self, version: str, day: int):
        self.version, self.created = version, datetime.datetime(2026, 1, day)
        self.warmed, self.closed = True, False

    def close(self) -> None:
        self.warmed, self.closed = False, True


def stored_model(name: str, version: str, day: int) -> InferenceModel:
    model = InferenceModel(name, StubRunner(version, day), [], [])
    model.tag = f"{name}:{version}"
    return model


def test_served_state_changes_under_a_lock_and_counts_live_followers(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELROAD_REPOSITORY_STATE", "")  # restored after the test
    state = ServedState.of_server(["a:1"])
    assert os.environ["MODELROAD_REPOSITORY_STATE"] == str(state.folder)  # for the workers to inherit
    assert ServedState.of_server(["ignored:1"]).read() == (0, ["a:1"])  # a worker joins the first process's state
    assert state.change(lambda tags: [*tags, "b:1"]) == 1
    assert state.read() == (1, ["a:1", "b:1"])
    state.acknowledge(1)
    (state.folder / "worker-999999999").write_text("1")  # a worker that died
    assert (state.followers(1), state.followers(2)) == (1, 0)


def test_latest_is_the_most_recently_created_version_whatever_the_order_of_loading():
    repository = ModelRepository([stored_model("m", "new", 2), stored_model("m", "old", 1)])
    assert repository.get("m").version == "new" and list(repository.versions["m"]) == ["old", "new"]
    with pytest.raises(NotFound):
        repository.get("m", "gone")


def test_unload_waits_for_requests_in_flight_and_refuses_pinned_models(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELROAD_REPOSITORY_STATE", "")  # restored after the test
    busy, family = stored_model("busy", "1", 1), stored_model("family", "1", 1)
    repository = ModelRepository([busy, family], pinned=[family.tag])
    admin = RepositoryAdmin(repository, ServedState.of_server([busy.tag, family.tag]), None, 1, timeout_s=5)

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
        with pytest.raises(Conflict):
            await admin.unload("family")
        return events

    assert asyncio.run(scenario()) == [
        "unloading, findable=False, closed=False",
        "answered, closed=False",
        "unloaded, closed=True",
    ]
    assert admin.state.read() == (1, [family.tag]) and admin.caught_up()
