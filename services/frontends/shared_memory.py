"""Triton's system shared-memory extension: a client on the server's host registers a POSIX shared-memory object
(`/dev/shm/<key>`, as `tritonclient.utils.shared_memory` makes them) under a region name, then names the region
(and an offset and size within it) for an input to be read from or an output to be written to, instead of sending
the bytes over HTTP or gRPC.

Off unless MODELROAD_SHARED_MEMORY is on: it is for clients that share the host (a sidecar, a pod's second
container), and any client that can reach the API can then make the server read and write the objects it names
(docs/security.md). Checked: a key is one name under /dev/shm (no path, no symlink followed, a regular file); a
region lies inside its object; an access lies inside its region, and the object is checked against the region's
end before each access (an object shrunk under the server would fault its worker otherwise).

The registrations are one JSON file per server (its `bentoml serve` process, by pid and start time) that every
worker reads when its record changes, so a region registered through one worker serves on all; each worker maps a
region's object on its first use and drops the map once the region is gone.
"""

from __future__ import annotations

import fcntl
import functools
import json
import mmap
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from services.errors import BadRequest, NotFound
from services.settings import SETTINGS

SHM = Path("/dev/shm")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEY = re.compile(r"^/?[A-Za-z0-9_.-]{1,200}$")
MAX_REGIONS = 64  # per server


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def check_counts(what: str, values: dict[str, object]) -> None:
    """BadRequest naming the first of `values` that is not a non-negative integer."""
    for field, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"{what}: {field} must be a non-negative integer, not {value!r}")


def object_path(key: str) -> Path:
    """The shared-memory object a key names (tritonclient's keys start with "/")."""
    if not KEY.fullmatch(key) or key.strip("/") in (".", ".."):
        raise BadRequest(
            f"shared memory key {key!r} is not one name of letters, digits, '_', '.' or '-' (e.g. /input0)"
        )
    return SHM / key.lstrip("/")


def open_object(key: str) -> int:
    """A read-write descriptor of the key's object: a regular file, not followed through a symlink."""
    path = object_path(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadRequest(
            f"no shared memory object {key!r} on this host (create it first: tritonclient.utils.shared_memory)"
        ) from None
    except OSError as exc:
        raise BadRequest(f"shared memory object {key!r} cannot be opened: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"shared memory object {key!r} is not a regular shared-memory object")
    return fd


class Mapped:
    """One region's object, mapped in this worker."""

    def __init__(self, region: Region):
        self.region, self.fd = region, open_object(region.key)
        try:
            self.map = mmap.mmap(self.fd, os.fstat(self.fd).st_size)
        except (ValueError, OSError) as exc:  # e.g. an empty object: nothing to map
            os.close(self.fd)
            raise BadRequest(f"region {region.name!r}: its object {region.key!r} cannot be mapped ({exc})") from None

    def span(self, offset: int, byte_size: int, what: str) -> tuple[int, int]:
        """The object's byte range for `byte_size` bytes at `offset` in the region, once checked."""
        region = self.region
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise BadRequest(
                f"{what}: {byte_size} bytes at offset {offset} run past region {region.name!r} "
                f"({region.byte_size} bytes)"
            )
        end = region.offset + offset + byte_size
        if os.fstat(self.fd).st_size < end or len(self.map) < end:
            raise BadRequest(f"{what}: region {region.name!r}'s object {region.key!r} is now smaller than the region")
        return region.offset + offset, end

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class SharedMemory:
    """The server's registered regions (one file its workers share) and this worker's maps of them."""

    def __init__(self, record: Path, server: str):
        self.record, self.server = record, server
        self._seen: tuple[int, int] | None = None  # the record's (inode, mtime) when last read
        self._regions: dict[str, Region] = {}
        self._maps: dict[str, Mapped] = {}

    @classmethod
    def of_this_server(cls) -> SharedMemory:
        """The registry of the `bentoml serve` process this worker belongs to (a record of a dead server that had
        the same pid is not its own: the record names its server's start time)."""
        parent = psutil.Process(os.getppid())
        return cls(
            Path(tempfile.gettempdir()) / f"modelroad-shm-{parent.pid}.json", f"{parent.pid}:{parent.create_time()}"
        )

    # ---- the registrations (every worker's) ----

    def regions(self) -> dict[str, Region]:
        try:
            seen = os.stat(self.record)
        except FileNotFoundError:
            self._seen, self._regions = None, {}
        else:
            if (seen.st_ino, seen.st_mtime_ns) != self._seen:
                self._seen, self._regions = (seen.st_ino, seen.st_mtime_ns), self._read()
        for name in [n for n, mapped in self._maps.items() if self._regions.get(n) != mapped.region]:
            self._maps.pop(name).close()
        return self._regions

    def _read(self) -> dict[str, Region]:
        try:
            document = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}
        if document.get("server") != self.server:
            return {}
        return {name: Region(name=name, **fields) for name, fields in document.get("regions", {}).items()}

    @contextmanager
    def _changing(self) -> Iterator[dict[str, Region]]:
        """The registrations, changed under the record's lock and written whole (write, then rename)."""
        with open(self.record.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            regions = dict(self.regions())
            yield regions
            document = {
                "server": self.server,
                "regions": {n: {k: v for k, v in r.describe().items() if k != "name"} for n, r in regions.items()},
            }
            scratch = self.record.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(json.dumps(document))
            scratch.replace(self.record)
            self._seen = None

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not NAME.fullmatch(name):
            raise BadRequest(f"region name {name!r} is not 1 to 64 letters, digits, '_', '.' or '-'")
        check_counts(f"region {name!r}", {"offset": offset, "byte_size": byte_size})
        fd = open_object(key)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if offset + byte_size > size:
            raise BadRequest(
                f"region {name!r}: {byte_size} bytes at offset {offset} run past object {key!r} ({size} bytes)"
            )
        with self._changing() as regions:
            if name in regions:
                raise BadRequest(f"shared memory region {name!r} is already registered: unregister it first")
            if len(regions) >= MAX_REGIONS:
                raise BadRequest(f"this server holds {MAX_REGIONS} regions, its limit: unregister one first")
            regions[name] = Region(name, key, offset, byte_size)

    def unregister(self, name: str | None = None) -> None:
        """One region (a name not registered is no error, as in Triton), or every region."""
        with self._changing() as regions:
            for gone in [name] if name else list(regions):
                regions.pop(gone, None)

    def status(self, name: str | None = None) -> list[Region]:
        regions = self.regions()
        if name is None:
            return list(regions.values())
        if name not in regions:
            raise NotFound(f"no shared memory region {name!r} is registered; registered: {sorted(regions)}")
        return [regions[name]]

    # ---- the data plane's reads and writes ----

    def _mapped(self, name: str, what: str) -> Mapped:
        region = self.regions().get(name)
        if region is None:
            raise BadRequest(f"{what}: no shared memory region {name!r} is registered")
        mapped = self._maps.get(name)
        if mapped is None:
            mapped = self._maps[name] = Mapped(region)
        return mapped

    def read(self, name: str, offset: int, byte_size: int, what: str) -> bytes:
        mapped = self._mapped(name, what)
        start, end = mapped.span(offset, byte_size, what)
        return mapped.map[start:end]

    def write(self, name: str, offset: int, byte_size: int, data: bytes, what: str) -> None:
        if len(data) > byte_size:
            raise BadRequest(f"{what} is {len(data)} bytes: more than the {byte_size} asked of region {name!r}")
        mapped = self._mapped(name, what)
        start, _ = mapped.span(offset, len(data), what)
        mapped.map[start : start + len(data)] = data


@functools.cache
def _this_server() -> SharedMemory:
    return SharedMemory.of_this_server()


def served_regions(what: str) -> SharedMemory:
    """This server's regions, for `what` a request asks of them; BadRequest with the extension off."""
    if not SETTINGS.shared_memory:
        raise BadRequest(f"{what}: shared memory is off on this server (MODELROAD_SHARED_MEMORY)")
    return _this_server()


@dataclass(frozen=True)
class Place:
    """Where a request puts one tensor (`what`: "input x", for messages): a region, an offset and size within it."""

    what: str
    region: str
    byte_size: int
    offset: int = 0

    @classmethod
    def of(cls, parameters: dict[str, Any], kind: str, name: str) -> Place | None:
        """The place a tensor's parameters name (None: not in shared memory, found with one lookup), checked."""
        region = parameters.get("shared_memory_region")
        if region is None:
            return None
        what = f"{kind} {name}"
        size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
        if not isinstance(region, str):
            raise BadRequest(f"{what}: shared_memory_region must be a region's name, not {region!r}")
        check_counts(what, {"shared_memory_byte_size": size, "shared_memory_offset": offset})
        return cls(what, region, size, offset)

    def read(self) -> bytes:
        return served_regions(self.what).read(self.region, self.offset, self.byte_size, self.what)

    def wrote(self, data: bytes) -> dict[str, Any]:
        """Write an output's raw bytes here; the output's parameters as answered."""
        served_regions(self.what).write(self.region, self.offset, self.byte_size, data, self.what)
        return {"shared_memory_region": self.region, "shared_memory_byte_size": len(data)}
