"""The wire between API workers and a runner service (services/runner_service.py).

An API worker's batcher collates its requests into ONNX feeds as usual and, with MODELROAD_RUNNER_URL
set, posts them to `POST /run/<model tag>` instead of running them: one call per batch, not per request.
Arrays travel in NumPy's own formats, loaded with allow_pickle=False: feeds as an .npz archive, the
output as .npy. Nothing is unpickled (BentoML's `bentoml.depends` between co-served services would
send pickles), and the arrays cross as raw bytes, not JSON numbers.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
import zipfile

import httpx
import numpy as np

from contracts.tensors import Feeds
from services.errors import Unavailable

log = logging.getLogger(__name__)

NPZ = "application/x-npz"
DEVICE_HEADER = "x-modelroad-device"
HOLDER = f"{socket.gethostname()}-{os.getpid()}"  # this API worker, to the runner service


def encode_feeds(feeds: Feeds) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **feeds)
    return buffer.getvalue()


# A call's inputs: a full text batch is 64 x 512 x 2 int64 (0.5 MB); far past that is not a batch but an attack.
MAX_NPZ_BYTES = 64 * 2**20
MAX_NPZ_MEMBERS = 16


def decode_feeds(data: bytes) -> Feeds:
    """Raises ValueError on anything but an .npz of plain arrays (object arrays would need pickle)."""
    if not data.startswith(b"PK"):  # np.load would take other bytes for a pickle (and refuse it, confusingly)
        raise ValueError("the body is not an .npz archive")
    try:
        # Sizes from the zip's headers, before anything is inflated: a small body must not decompress into
        # gigabytes. zipfile stops each member at its declared size, so the declared sizes bound the work.
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"the body is not an .npz archive: {exc}") from None
    declared = sum(member.file_size for member in members)
    if len(members) > MAX_NPZ_MEMBERS or declared > MAX_NPZ_BYTES:
        raise ValueError(
            f"the .npz holds {len(members)} arrays of {declared} bytes; "
            f"at most {MAX_NPZ_MEMBERS} arrays of {MAX_NPZ_BYTES} bytes in all"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (
        ValueError,
        OSError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
    ) as exc:  # np.load's errors for a foreign or cut-off body
        raise ValueError(f"the body is not an .npz archive of plain arrays: {exc}") from None


class RunnerUnavailable(Unavailable):
    """The runner service could not be reached or did not answer a batch: the requests in it get 503."""


class RemoteSession:
    """One model's session in a runner service, with the `run(feeds) -> outputs` of a local session.

    Called from the batcher's one thread per model, so one keep-alive connection per model and worker.
    """

    def __init__(self, url: str, tag: str, timeout_s: float, wait_s: float):
        self.url, self.tag = url.rstrip("/"), tag
        self.route = f"/run/{tag}"
        self.device = "unknown"  # until the runner names it
        # Idle connections are dropped before the server's keep-alive (uvicorn: 5 s) would close them under us.
        self.client = httpx.Client(
            base_url=self.url, timeout=timeout_s, limits=httpx.Limits(max_connections=4, keepalive_expiry=2.0)
        )
        self.wait_until_ready(wait_s)
        self.holding = f"/models/{tag}/holders/{HOLDER}"
        held = self.client.put(self.holding)  # the runner loads a version it does not serve yet
        if held.status_code != 200:
            raise RuntimeError(f"the runner service cannot serve {tag}: {held.text[:300]}")
        self.device = held.json()["device"]

    def wait_until_ready(self, wait_s: float) -> None:
        """API workers and the runner may start in any order (pods do): wait for its /readyz, up to wait_s."""
        deadline = time.monotonic() + wait_s
        logged = False
        while True:
            try:
                if self.client.get("/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the runner service at {self.url} was not ready within {wait_s:g} s "
                    "(MODELROAD_RUNNER_WAIT_S); start it, or unset MODELROAD_RUNNER_URL to run in-process"
                )
            if not logged:
                log.info("waiting for the runner service at %s", self.url)
                logged = True
            time.sleep(0.5)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        body = encode_feeds(feeds)
        try:
            response = self._post(body)
        except httpx.TransportError as exc:
            raise RunnerUnavailable(f"the model runner at {self.url} could not be reached: {exc!r}") from None
        if response.status_code != 200:
            try:
                reason = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200]
            log.error("runner %s answered %s for %s: %s", self.url, response.status_code, self.tag, reason)
            raise RunnerUnavailable(f"the model runner answered {response.status_code}: {reason}")
        self.device = response.headers.get(DEVICE_HEADER, self.device)
        try:
            return decode_feeds(response.content)
        except ValueError as exc:
            raise RunnerUnavailable(f"the model runner's answer is not an .npz of arrays: {exc}") from None

    def close(self) -> None:
        """This worker retired the version: the runner closes it once no worker holds it."""
        try:
            self.client.delete(self.holding)
        except httpx.TransportError as exc:
            log.warning("the runner service did not hear that %s was retired: %r", self.tag, exc)
        self.client.close()

    def _post(self, body: bytes) -> httpx.Response:
        try:
            return self.client.post(self.route, content=body, headers={"content-type": NPZ})
        except (httpx.RemoteProtocolError, httpx.ConnectError):
            # A kept-alive connection the runner closed (or a runner restarting): inference is idempotent, so once more.
            return self.client.post(self.route, content=body, headers={"content-type": NPZ})
