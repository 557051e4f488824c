"""A runner: one stored model's ONNX Runtime session on one device (or in a runner service), behind its own micro-batcher."""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort

from services.batching import MicroBatcher
from services.metrics import INFERENCE_SECONDS, MODEL_INFO
from services.remote import Feeds, RemoteSession
from services.settings import ServeSettings

log = logging.getLogger(__name__)


class ModelIntegrityError(RuntimeError):
    """A stored model's files do not match the sha256 recorded when it was registered."""


def verified_model(tag: str) -> bentoml.models.BentoModel:
    """The store reference for `tag`, after checking every file against its recorded sha256.

    Called at import time, so `bentoml serve` refuses to start on a mismatch instead of
    restarting workers in a loop.
    """
    stored = bentoml.models.get(tag)
    recorded: dict[str, str] = stored.info.metadata.get("sha256", {})
    if "model.onnx" not in recorded:
        raise ModelIntegrityError(f"{stored.tag} has no sha256 for model.onnx in its metadata; re-register it")
    for name, expected in recorded.items():
        digest = hashlib.sha256()
        with open(stored.path_of(name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ModelIntegrityError(
                f"{stored.tag}: {name} has sha256 {digest.hexdigest()[:12]}…, registered {expected[:12]}…; "
                "the file was changed after registration: re-train or re-import the model"
            )
    return bentoml.models.BentoModel(str(stored.tag))


def choose_providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    """ONNX Runtime providers for the configured device: cpu, cuda, or auto (cuda when present, else cpu)."""
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        if device == "auto":
            log.warning("device=auto: ONNX Runtime has no CUDA provider here; running on CPU")
        return ["CPUExecutionProvider"], "cpu"
    if not has_cuda:
        raise RuntimeError("device=cuda but this ONNX Runtime has no CUDA provider: install onnxruntime-gpu or set MODELROAD_DEVICE=cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"


class LocalSession:
    """A model's ONNX Runtime session in this process, on the configured device."""

    def __init__(self, model_path: str, settings: ServeSettings, tag: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_threads
        options.inter_op_num_threads = 1
        providers, wanted = choose_providers(settings.device, ort.get_available_providers())
        self.session = ort.InferenceSession(model_path, options, providers=providers)
        self.inputs = self.session.get_inputs()
        # A CUDA provider that cannot start (no GPU) leaves the session on CPU: report what runs.
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        if self.device != wanted:
            log.warning("%s: CUDA was asked for but could not start; running on CPU", tag)
        log.info("%s loaded on %s (%d ONNX Runtime threads)", tag, self.device, settings.ort_threads)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]


class OnnxRunner:
    """One model: its session (here, or in the runner service at MODELROAD_RUNNER_URL) behind a micro-batcher."""

    def __init__(
        self,
        stored: bentoml.Model,
        settings: ServeSettings,
        infer: Callable[[OnnxRunner, Sequence[Any]], Sequence[Any]],
        count_items: Callable[[Any], int] = len,
    ):
        self.name = stored.tag.name
        self.tag, self.version = str(stored.tag), stored.tag.version
        self.metadata: dict[str, Any] = stored.info.metadata
        self.session: LocalSession | RemoteSession = (
            RemoteSession(settings.runner_url, self.tag, settings.request_timeout_s, settings.runner_wait_s)
            if settings.runner_url
            else LocalSession(stored.path_of("model.onnx"), settings, self.tag)
        )
        self._infer = infer
        self.warmed = False
        self.batcher = MicroBatcher(
            self.name, self.infer, count_items,
            max_items=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000,
        )  # fmt: skip

    def infer(self, payloads: Sequence[Any]) -> Sequence[Any]:
        """Collate payloads, run them as one batch, split the results (the family's infer function)."""
        return self._infer(self, payloads)

    def warm_up(self, payload: Any) -> None:
        # One real call before readiness: ONNX Runtime allocates and picks kernels on the first run
        # (and a runner service names its device).
        self.infer([payload])
        self.warmed = True
        MODEL_INFO.labels(self.name, self.version, self.session.device, str(self.metadata.get("opset", ""))).set(1)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One inference call (one batch); returns the first output."""
        with INFERENCE_SECONDS.labels(self.name).time():
            return self.session.run(feeds)

    async def submit(self, payload: Any) -> Any:
        return await self.batcher.submit(payload)


def rows(feeds: Feeds) -> int:
    return len(next(iter(feeds.values())))


def run_calls(runner: OnnxRunner, calls: Sequence[Feeds]) -> list[np.ndarray]:
    """Each call's output; calls whose inputs agree in dtype and shape past the batch axis run as one batch.

    The infer function of runners whose payloads are ready feeds: the runner service's, the forecasters'.
    """
    outputs: list[np.ndarray] = [np.empty(0)] * len(calls)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, feeds in enumerate(calls):
        groups[tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(feeds.items()))].append(i)
    for indices in groups.values():
        merged = runner.run({name: np.concatenate([calls[i][name] for i in indices]) for name in calls[indices[0]]})
        start = 0
        for i in indices:
            outputs[i] = merged[start : start + rows(calls[i])]
            start += rows(calls[i])
    return outputs
