"""A runner: one stored model's ONNX Runtime session on one device (or in a runner service), behind a micro-batcher."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import bentoml
import numpy as np
import onnxruntime as ort
from prometheus_client import Gauge

from contracts.answers import OOD_OUTPUT
from contracts.card import ModelCard, file_sha256
from contracts.tensors import Feeds, TensorSpec, zero_feeds
from services.ops.metrics import MODEL_INFO, RunSeries, VersionSeries
from services.runtime.batching import Admitted, MicroBatcher
from services.runtime.remote import RemoteSession
from services.settings import ServeSettings

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]  # ONNX output name -> array, batch axis first


class ModelIntegrityError(RuntimeError):
    """A stored model's files do not match the sha256 recorded when it was registered."""


class ModelLoadError(RuntimeError):
    """ONNX Runtime cannot open a stored model (e.g. external data outside its folder, an unsupported operator)."""


def verified_model(tag: str, pins: dict[str, str] | None = None) -> bentoml.models.BentoModel:
    """The store reference for `tag`, after checking every file against its recorded sha256, the digest pinned
    for its name (if any), and that ONNX Runtime opens it.

    Called at import time, so `bentoml serve` refuses to start with one error instead of restarting
    workers in a loop.
    """
    stored = bentoml.models.get(tag)
    card = ModelCard.from_metadata(stored.info.metadata)
    pinned = {t: d for t, d in (pins or {}).items() if t.split(":")[0] == stored.tag.name}
    if pinned and pinned.get(str(stored.tag)) != card.digest:
        raise ModelIntegrityError(
            f"{stored.tag} (digest {card.digest}) is not what MODELROAD_MODEL_DIGESTS pins for {stored.tag.name}: "
            f"{', '.join(f'{t}={d}' for t, d in pinned.items())}"
        )
    recorded = card.sha256
    if "model.onnx" not in recorded:
        raise ModelIntegrityError(f"{stored.tag} has no sha256 for model.onnx in its metadata; re-register it")
    for name, expected in recorded.items():
        found = file_sha256(stored.path_of(name))
        if found != expected:
            raise ModelIntegrityError(
                f"{stored.tag}: {name} has sha256 {found[:12]}…, registered {expected[:12]}…; "
                "the file was changed after registration: re-train or re-import the model"
            )
    try:
        ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{stored.tag}: ONNX Runtime cannot load model.onnx: {exc}") from None
    return bentoml.models.BentoModel(str(stored.tag))


@functools.cache
def cpu_fallback_said() -> None:
    """Once a process, not once a model version loaded."""
    log.warning("device=auto: ONNX Runtime has no CUDA provider here; running on CPU")


def choose_providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    """ONNX Runtime providers for the configured device: cpu, cuda, or auto (cuda when present, else cpu)."""
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        if device == "auto":
            cpu_fallback_said()
        return ["CPUExecutionProvider"], "cpu"
    if not has_cuda:
        raise RuntimeError(
            "device=cuda but this ONNX Runtime has no CUDA provider: "
            "install onnxruntime-gpu or set MODELROAD_DEVICE=cpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"


def onnx_signature(session: ort.InferenceSession) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    def spec(arg: ort.NodeArg) -> TensorSpec:
        return TensorSpec.from_onnx(arg.name, arg.type, arg.shape)

    return tuple(map(spec, session.get_inputs())), tuple(map(spec, session.get_outputs()))


def session_options(settings: ServeSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_threads
    options.inter_op_num_threads = 1
    return options


class LocalSession:
    """A model's ONNX Runtime session in this process, on the configured device."""

    def __init__(self, session: ort.InferenceSession, wanted: str, tag: str, threads: int, ood_scores: bool = True):
        self.session = session
        # ONNX Runtime runs only the nodes the fetched outputs need: with scores off, not the scoring ones.
        self.output_names = [o.name for o in session.get_outputs() if ood_scores or o.name != OOD_OUTPUT]
        # A CUDA provider that cannot start (no GPU) leaves the session on CPU: report what runs.
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        if self.device != wanted:
            log.warning("%s: CUDA was asked for but could not start; running on CPU", tag)
        log.info("%s loaded on %s (%d ONNX Runtime threads)", tag, self.device, threads)

    def run(self, feeds: Feeds) -> Outputs:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def close(self) -> None:
        """Nothing to release: the session goes with the runner."""


# A runner's collate: the calls of one batch (each its feeds) -> each call's outputs, run in as few ONNX calls as fit.
Collate = Callable[["OnnxRunner", Sequence[Feeds]], list[Outputs]]


class OnnxRunner:
    """One model: its session (here, or in the runner service at MODELROAD_RUNNER_URL) behind a micro-batcher.

    A call is the feeds of one request (one or more rows); the batcher gathers calls and `collate` merges them.
    """

    def __init__(
        self,
        stored: bentoml.Model,
        settings: ServeSettings,
        collate: Collate | None = None,
        graph: str = "model.onnx",
        derive: Callable[[Outputs], Outputs] | None = None,
    ):
        """`graph`: which of the stored files; another than model.onnx is served under `<name>-<its stem>` (e.g. a
        generator's `fashion-diffusion-decoder`), in this process. `derive`: arrays a family's answers read,
        computed from each run's outputs for the whole batch and split with them; the graph's own outputs (the
        protocol's) leave them out."""
        self.name = stored.tag.name if graph == "model.onnx" else f"{stored.tag.name}-{graph.removesuffix('.onnx')}"
        settings = settings if graph == "model.onnx" else dataclasses.replace(settings, runner_url="")
        self.tag, self.version = str(stored.tag), stored.tag.version
        self.created = stored.info.creation_time
        self.card = ModelCard.from_metadata(stored.info.metadata)
        self.series = VersionSeries(self.name, self.version)  # what a rollout compares between versions
        self.runs = RunSeries(self.name, self.version)  # its ONNX Runtime calls (Triton's statistics read them)
        providers, wanted = choose_providers(settings.device, ort.get_available_providers())
        # The API worker reads the graph's signature itself, also when a runner service computes.
        session = ort.InferenceSession(
            stored.path_of(graph),
            session_options(settings),
            providers=providers if not settings.runner_url else ["CPUExecutionProvider"],
        )
        self.inputs, self.outputs = onnx_signature(session)
        self.session: LocalSession | RemoteSession = (
            RemoteSession(settings.runner_url, self.tag, settings.request_timeout_s, settings.runner_wait_s)
            if settings.runner_url
            else LocalSession(session, wanted, self.tag, settings.ort_threads, settings.ood_scores)
        )
        # Calls merge into one batch only where every input's first axis is dynamic (an imported model's may not be).
        self._collate = collate or (run_calls if all(spec.shape[:1] == (-1,) for spec in self.inputs) else each_alone)
        self.derive = derive
        self.warmed = False
        self.batcher = MicroBatcher(
            self.name,
            self.infer,
            rows,
            max_items=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            company=Admitted.others,
            version=self.version,
        )

    def infer(self, calls: Sequence[Feeds]) -> list[Outputs]:
        return self._collate(self, calls)

    def warm_up(self) -> None:
        # One real call before readiness: ONNX Runtime allocates and picks kernels on the first run
        # (and a runner service names its device).
        self.infer([zero_feeds(self.inputs)])
        self.warmed = True
        self._info().set(1)

    def close(self) -> None:
        """Stop taking calls (an unloaded model's; its requests in flight have finished)."""
        self.warmed = False
        self.batcher.close()
        self.session.close()
        self._info().set(0)

    def _info(self) -> Gauge:
        return MODEL_INFO.labels(self.name, self.version, self.session.device, str(self.card.opset or ""))

    def run(self, feeds: Feeds) -> Outputs:
        """One inference call (one batch): the graph's outputs, and what `derive` makes of them. Counted once the
        runner is warm (the warm-up call is not a client's)."""
        start = time.perf_counter()
        outputs = self.session.run(feeds)
        if self.warmed:
            self.runs.record(rows(feeds), time.perf_counter() - start)
        return {**outputs, **self.derive(outputs)} if self.derive else outputs

    def graph_outputs(self, outputs: Outputs) -> Outputs:
        """A call's outputs without what `derive` added."""
        if self.derive is None:
            return outputs
        return {spec.name: outputs[spec.name] for spec in self.outputs if spec.name in outputs}

    async def submit(self, feeds: Feeds) -> Outputs:
        """One call's outputs, computed in a batch with whatever else is queued."""
        return await self.batcher.submit(feeds)


def rows(feeds: Feeds) -> int:
    """A call's items: the length of its inputs' batch axis (the batcher counts items, not calls)."""
    return len(next(iter(feeds.values())))


def split(outputs: Outputs, calls: Sequence[Feeds], indices: Sequence[int], into: list[Outputs]) -> None:
    """Hand each call in `indices` its rows of a merged run's outputs."""
    start = 0
    for i in indices:
        n = rows(calls[i])
        into[i] = {name: array[start : start + n] for name, array in outputs.items()}
        start += n


def run_calls(runner: OnnxRunner, calls: Sequence[Feeds]) -> list[Outputs]:
    """Each call's outputs; calls whose inputs agree in dtype and shape past the batch axis run as one batch.

    Safe for any model: nothing is padded.
    """
    results: list[Outputs] = [{}] * len(calls)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, feeds in enumerate(calls):
        groups[tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(feeds.items()))].append(i)
    for indices in groups.values():
        split(
            runner.run({name: np.concatenate([calls[i][name] for i in indices]) for name in calls[indices[0]]}),
            calls,
            indices,
            results,
        )
    return results


def each_alone(runner: OnnxRunner, calls: Sequence[Feeds]) -> list[Outputs]:
    """For a model whose batch axis is fixed: every call its own run."""
    return [runner.run(feeds) for feeds in calls]


def padded_calls(pad_values: dict[str, int]) -> Collate:
    """A collate for (N, T) sequence inputs: every call padded on axis 1 to the batch's longest, one run.

    Right only for a model that ignores padding (the Transformer's attention mask does); the forecasters do not.
    """

    def collate(runner: OnnxRunner, calls: Sequence[Feeds]) -> list[Outputs]:
        longest = max(array.shape[1] for feeds in calls for array in feeds.values())
        merged = {
            name: np.concatenate(
                [
                    np.pad(feeds[name], ((0, 0), (0, longest - feeds[name].shape[1])), constant_values=pad_values[name])
                    for feeds in calls
                ]
            )
            for name in calls[0]
        }
        results: list[Outputs] = [{}] * len(calls)
        split(runner.run(merged), calls, range(len(calls)), results)
        return results

    return collate
