"""The system shared-memory registry: regions registered by one worker served by another, every access bounded,
and each way a client can break a region refused with a 400, never a fault."""

import os

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm

from services.errors import BadRequest, NotFound
from services.frontends.shared_memory import MAX_REGIONS, SHM, Place, SharedMemory


@pytest.fixture
def objects(tmp_path):
    """Make shared-memory objects as tritonclient makes them; all destroyed after the test."""
    made = []

    def make(key: str, size: int):
        handle = shm.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def workers(tmp_path, server: str = "1:100.0") -> tuple[SharedMemory, SharedMemory]:
    """Two workers' registries on one server's record."""
    record = tmp_path / "regions.json"
    return SharedMemory(record, server), SharedMemory(record, server)


def test_a_region_registered_by_one_worker_is_read_and_written_by_another(tmp_path, objects):
    handle = objects(f"/modelroad-test-{os.getpid()}", 64)
    shm.set_shared_memory_region(handle, [np.arange(8, dtype=np.float32)])
    one, other = workers(tmp_path)
    one.register("in", f"/modelroad-test-{os.getpid()}", offset=16, byte_size=48)
    assert [r.describe() for r in other.status()] == [
        {"name": "in", "key": f"/modelroad-test-{os.getpid()}", "offset": 16, "byte_size": 48}
    ]
    assert np.frombuffer(other.read("in", 0, 16, what="input x"), np.float32).tolist() == [4, 5, 6, 7]
    other.write("in", 16, 32, np.full(2, 9, np.float32).tobytes(), what="output y")
    assert shm.get_contents_as_numpy(handle, np.float32, [16], offset=0)[8:10].tolist() == [9, 9]
    one.unregister("in")
    with pytest.raises(BadRequest, match="input x: no shared memory region 'in' is registered"):
        other.read("in", 0, 4, what="input x")
    assert other.status() == [] and other._maps == {}  # the gone region's map is closed


def test_every_bad_registration_and_access_is_a_bad_request(tmp_path, objects):
    key = f"/modelroad-test-{os.getpid()}"
    objects(key, 64)
    (SHM / f"modelroad-link-{os.getpid()}").symlink_to(SHM / key.strip("/"))
    one, other = workers(tmp_path)
    cases = [
        (lambda: one.register("r", "../../etc/passwd", 0, 4), "is not one name"),
        (lambda: one.register("r", f"/modelroad-link-{os.getpid()}", 0, 4), "cannot be opened"),
        (lambda: one.register("r", "/modelroad-no-such-object", 0, 4), "no shared memory object"),
        (lambda: one.register("r", key, 32, 64), "run past object"),
        (lambda: one.register("r/x", key, 0, 4), "region name 'r/x'"),
        (lambda: one.register("r", key, -1, 4), "offset must be a non-negative integer"),
    ]
    try:
        for call, message in cases:
            with pytest.raises(BadRequest, match=message):
                call()
    finally:
        (SHM / f"modelroad-link-{os.getpid()}").unlink()
    one.register("r", key, 0, 32)
    with pytest.raises(BadRequest, match="already registered"):
        other.register("r", key, 0, 8)
    with pytest.raises(BadRequest, match="run past region 'r'"):
        other.read("r", 24, 16, what="input x")
    with pytest.raises(BadRequest, match="more than the 8 asked"):
        other.write("r", 0, 8, b"\0" * 12, what="output y")
    with pytest.raises(NotFound, match="no shared memory region 'nope'"):
        other.status("nope")
    os.truncate(SHM / key.strip("/"), 16)  # the client shrinks the object under the server: no fault, a 400
    with pytest.raises(BadRequest, match="now smaller than the region"):
        other.read("r", 0, 32, what="input x")
    os.truncate(SHM / key.strip("/"), 0)
    one.register("empty", key, 0, 0)  # an empty region of an empty object: nothing to map, a 400 on use
    with pytest.raises(BadRequest, match="cannot be mapped"):
        SharedMemory(tmp_path / "regions.json", "1:100.0").read("empty", 0, 0, what="input x")


def test_the_regions_are_bounded_and_a_dead_servers_record_is_not_read(tmp_path, objects):
    key = f"/modelroad-test-{os.getpid()}"
    objects(key, 8)
    one, _ = workers(tmp_path)
    for number in range(MAX_REGIONS):
        one.register(f"r{number}", key, 0, 8)
    with pytest.raises(BadRequest, match=f"holds {MAX_REGIONS} regions"):
        one.register("one-more", key, 0, 8)
    later = SharedMemory(tmp_path / "regions.json", "1:200.0")  # a new server that took the same pid
    assert later.status() == []
    one.unregister()
    assert one.status() == []


@pytest.mark.parametrize(
    "parameters,message",
    [
        ({"shared_memory_region": 3, "shared_memory_byte_size": 4}, "shared_memory_region must be"),
        ({"shared_memory_region": "r"}, "shared_memory_byte_size must be a non-negative integer, not None"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": -2}, "offset must"),
    ],
)
def test_a_tensors_place_is_checked(parameters, message):
    with pytest.raises(BadRequest, match=message):
        Place.of(parameters, "input", "x")
    assert Place.of({"binary_data_size": 4}, "input", "x") is None
