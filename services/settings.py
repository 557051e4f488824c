"""Serving configuration: one frozen dataclass, read once from MODELROAD_* environment variables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    device: str = "auto"  # cpu | cuda | auto (cuda when ONNX Runtime has it, else cpu with one log line)
    workers: int = 1  # API worker processes; ONNX Runtime threads are split among them
    cpu_count: int = os.cpu_count() or 1
    max_batch_size: int = 64  # items (not requests) per inference call
    max_wait_ms: float = 1.0  # how long a batch may wait for company once the runner is idle
    max_body_bytes: int = 10 * 1024 * 1024  # larger requests get 413 before their body is read
    # JSON bodies (every body but multipart uploads and binary tensors): the largest valid one is ~1 MiB
    # (64 images of JSON floats); parsing holds the event loop milliseconds a MiB.
    max_json_bytes: int = 2 * 1024 * 1024
    request_timeout_s: float = 30.0  # a request still unanswered after this gets 504 (and its queued work is dropped)
    max_in_flight: int = 256  # API requests a worker admits at once (~4 full batches); more get 503 + Retry-After
    max_image_pixels: int = MAX_IMAGE_PIXELS  # an uploaded image's declared pixels, checked before decoding
    max_image_bytes: int = MAX_IMAGE_BYTES  # and its size decoded (width x height x bands), checked before decoding
    max_text_chars: int = 2_000  # longest /classify_text text accepted (tokens past the model's limit are cut)
    max_history: int = 5_000  # longest /forecast history accepted (the last `window` values are used)
    image_model: str = "fashion-cnn:latest"
    lstm_model: str = "co2-lstm:latest"
    gru_model: str = "co2-gru:latest"
    text_model: str = "wordnet-transformer:latest"  # or wordnet-transformer-int8:latest
    generation_model: str = "fashion-diffusion:latest"  # the default generator (this and gan_model empty: no routes)
    gan_model: str = "fashion-gan:latest"  # the one-step generator /generate_images offers by `model`; empty: none
    # More store tags, comma-separated, served beside the families' through the inference protocol (tensors in and
    # out): an imported model (`python -m training import`), or another version of a family's model side by side
    # (the family's routes stay on the version its own setting names, until the repository's `traffic` or `load`).
    models: str = ""
    # Pins, comma-separated `name:version=sha256:...` (from `python -m training list --digests`): a pinned name
    # serves only that version with exactly those files, or the server does not start.
    model_digests: str = ""
    # Turns on the model repository extension (/v2/repository: index, load, unload), for bearers of this token.
    admin_token: str = dataclasses.field(default="", repr=False)
    # With the extension on: the folder of the fleet's desired state (services/dataplane/desired.py), shared by every
    # replica on one model store and kept across restarts; empty: `fleet` in BENTOML_HOME, beside `models`.
    fleet_state: str = ""
    # A file of API keys (one a line, the key or `sha256:<hex>` of it; services/edge/keys.py): when set, every
    # prediction and inference-protocol route needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.
    api_keys_file: str = ""
    protect_docs_and_metrics: bool = False  # with keys: /docs.json and /metrics need one too (else they stay open)
    rate_limit: float = 0.0  # requests/s per key (per client address without keys), all workers together; 0: off
    rate_burst: float = 0.0  # requests a quiet key may send at once; 0: the rate, at least 1
    # Origins whose pages may call the API from a browser, comma-separated (e.g. https://app.example.com);
    # empty: no CORS headers at all, and browsers keep other origins' pages from reading answers.
    cors_origins: str = ""
    ssl_certfile: str = ""  # both set: the server speaks HTTPS only (TLS 1.2 or later)
    ssl_keyfile: str = ""
    # Triton's system shared-memory extension (services/frontends/shared_memory.py): for clients on this host only,
    # since any client of the API can then make the server read and write the shared-memory objects it names.
    shared_memory: bool = False
    # One JSON line a request (request id, method, route template, status, duration; no bodies, no keys).
    # Off by default: writing a line a request costs throughput.
    access_log: bool = False
    drain_s: float = 1.0  # after SIGTERM, answer with `Connection: close` (new work: 503) this long, then stop
    tracing: bool = (
        False  # OpenTelemetry spans per request; off, BentoML's tracing middleware passes requests straight on
    )
    # Payload logs (services/ops/payloads.py): a folder turns them on; one JSON line per prediction, a summary of
    # the input (its values too with payload_raw_inputs), written off the request path, rotated by size.
    payload_log: str = ""
    payload_sample_rate: float = 1.0  # the share of predictions logged
    payload_log_max_mb: int = 64  # per file; then it is rotated
    payload_log_files: int = 5  # files kept per worker, the current one included
    payload_raw_inputs: bool = False
    # Every answer's OOD score and verdict (services/families/ood.py); off, the graphs' scoring nodes are not run and
    # the answers carry none (what `python -m bench.ood` compares).
    ood_scores: bool = True
    # OOD thresholds that replace the cards' (the validation split's at 1% false alarms), comma-separated
    # `model=threshold`, e.g. `fashion-cnn=6.5`: higher flags fewer inputs.
    ood_thresholds: str = ""
    # The inference protocol over gRPC, served by every worker on this port beside HTTP (same address); 0: off.
    grpc_port: int = 8001
    # Set by `python -m training serve`: the training runs' progress records (contracts/progress.py). A family model
    # the store lacks at start whose run has queued one is served once registered; its routes say how far it is.
    training_progress: str = ""
    runner_url: str = ""  # a runner service (services/runner_service.py) to run the models in; empty: in-process
    runner_wait_s: float = 120.0  # how long a worker waits at start for the runner service to be ready

    @property
    def extra_models(self) -> tuple[str, ...]:
        return tuple(tag.strip() for tag in self.models.split(",") if tag.strip())

    @property
    def fleet_folder(self) -> Path:
        home = os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
        return Path(self.fleet_state or os.path.join(home, "fleet"))

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def pinned_digests(self) -> dict[str, str]:
        pins = [pin.strip() for pin in self.model_digests.split(",") if pin.strip()]
        if not all("=" in pin and ":" in pin.split("=")[0] for pin in pins):
            raise ValueError(f"MODELROAD_MODEL_DIGESTS={self.model_digests!r}: write name:version=sha256:<hex>, ...")
        return dict(pin.split("=", 1) for pin in pins)

    @property
    def ood_threshold_overrides(self) -> dict[str, float]:
        pairs = [pair.strip().split("=", 1) for pair in self.ood_thresholds.split(",") if pair.strip()]
        try:
            return {name.strip(): float(value) for name, value in pairs}
        except ValueError:
            raise ValueError(f"MODELROAD_OOD_THRESHOLDS={self.ood_thresholds!r}: write model=number, ...") from None

    @property
    def ort_threads(self) -> int:
        # threads x workers never exceed the cores
        return max(1, self.cpu_count // max(1, self.workers))

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ = os.environ) -> ServeSettings:
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"MODELROAD_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = raw.lower() in ("1", "true", "yes", "on") if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"MODELROAD_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)
        if not 0 <= settings.payload_sample_rate <= 1 or settings.payload_log_files < 1:
            raise ValueError("MODELROAD_PAYLOAD_SAMPLE_RATE must be from 0 to 1 and MODELROAD_PAYLOAD_LOG_FILES >= 1")
        settings.ood_threshold_overrides  # noqa: B018  (refused here, at start, rather than at the first model)
        if settings.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"MODELROAD_DEVICE={settings.device!r}: choose cpu, cuda or auto")
        return settings


SETTINGS = ServeSettings.from_env()


def service_config(name: str, workers: int = SETTINGS.workers) -> dict[str, Any]:
    """`@bentoml.service` arguments from the settings."""
    return {
        "name": name,
        "workers": workers,
        "logging": {"access": {"enabled": False}},  # the app writes its own (services/edge/middleware.py, access_log)
        # A backstop only: the edge answers 504 at request_timeout_s and cancels the work (services/edge/middleware.py).
        "traffic": {"timeout": SETTINGS.request_timeout_s + 1},
        # BentoML labels its request metrics by raw path (unbounded series); the app counts requests instead.
        "metrics": {"enabled": False},
        **(
            {"ssl": {"enabled": True, "certfile": SETTINGS.ssl_certfile, "keyfile": SETTINGS.ssl_keyfile}}
            if SETTINGS.ssl_certfile and SETTINGS.ssl_keyfile
            else {}
        ),
        # Excluding every URL is the one switch BentoML has to take its tracing middleware off the hot path.
        **({} if SETTINGS.tracing else {"tracing": {"excluded_urls": [".*"]}}),
    }
