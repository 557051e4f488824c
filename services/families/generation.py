"""Image generation: a seed, a class and a count in; PNG images out, whole or step by step (server-sent events).

Two kinds of generator, told apart by their card's net (`DRAWERS`): the latent diffusion model runs a denoising
loop per request (contracts/sampling.py) and submits every step to the denoiser's micro-batcher, so the steps of
concurrent requests, wherever each is in its loop, share ONNX Runtime calls; the GAN draws in one call of its
generator. An image depends on its seed alone, not on what it was batched with (each row is computed alike;
tested). A request names its generator by `model`; the first of the family's models answers otherwise.
"""

import asyncio
import base64
import io
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import bentoml
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image

from contracts.card import ModelCard
from contracts.generation import GeneratedImages, GenerationRequest, request_model
from contracts.preprocessing import ImagePreprocessing
from contracts.sampling import MAX_SEED, Denoising, cosine_schedule, first_noise, image_seeds
from contracts.tensors import TensorSpec
from services.compat.fastapi_routes import DirectRoute
from services.dataplane.models import Choice
from services.edge.routes import ERROR_RESPONSES, JSON_ONLY, json_response
from services.errors import BadRequest, NotAcceptable, ServingError
from services.families.base import FamilyPipeline, answering, register_family
from services.ops.metrics import GENERATED_IMAGES, GENERATION_SECONDS, GENERATION_STEPS
from services.ops.payloads import log_predictions
from services.runtime.runner import OnnxRunner
from services.settings import SETTINGS

log = logging.getLogger(__name__)

PREVIEW_EVERY = 5  # a stream's step events carry a preview of the images every this many steps


def png(pixels: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """The decoder's (N, 1, H, W) brightness in [0, 1] -> (N, H, W) uint8."""
    return np.clip(np.rint(pixels[:, 0] * 255.0), 0, 255).astype(np.uint8)


class Drawing(Protocol):
    """One request's images on their way: `done` calls of the generator's graphs made so far, until `finished`."""

    done: int

    @property
    def finished(self) -> bool: ...


class Drawer(Protocol):
    """How one kind of generator draws: its graphs' runners and the calls a request makes of them."""

    runners: tuple[OnnxRunner, ...]  # model.onnx's first
    streams_steps: bool  # whether a stream shows the calls as `step` events (a one-call draw shows only `done`)

    def start(self, seeds: list[int], labels: np.ndarray, request: GenerationRequest) -> Drawing:
        """A request's drawing: an image per seed, of the class ids `labels` (the null class id: any class);
        a request this generator cannot draw is refused here (BadRequest)."""
        ...

    def calls(self, drawing: Drawing) -> int:
        """The calls the whole drawing takes (a stream's `of`)."""
        ...

    async def step(self, drawing: Drawing) -> None: ...

    async def images(self, drawing: Drawing) -> np.ndarray:
        """(N, H, W) uint8: the finished images."""
        ...

    async def preview(self, drawing: Drawing) -> np.ndarray | None:
        """(N, H, W) uint8: the images as they stand now, after this call; None: no preview now."""
        ...

    def answered(self, request: GenerationRequest) -> tuple[int, float | None]:
        """The steps and guidance a request was drawn with (what the answer reports)."""
        ...


DRAWERS: dict[str, Callable[[bentoml.Model, ModelCard], Drawer]] = {}  # by the card's net (`family`)


def drawer_for(net: str) -> Callable[[type], type]:
    """Class decorator: the drawer of generators whose card names `net`."""

    def register(cls: type) -> type:
        DRAWERS[net] = cls
        return cls

    return register


@drawer_for("latent-diffusion")
class DiffusionDrawer:
    """The denoiser's steps (model.onnx), then the decoder (decoder.onnx), each behind a batcher."""

    streams_steps = True

    def __init__(self, stored: bentoml.Model, card: ModelCard):
        self.null_label = len(card.labels)  # the class id the model was trained to read as "no class"
        self.latent = int(card.model_config["latent"])
        self.alphas = cosine_schedule(int(card.model_config["timesteps"]))
        self.denoiser = OnnxRunner(stored, SETTINGS)
        self.decoder = OnnxRunner(stored, SETTINGS, graph="decoder.onnx")
        self.runners = (self.denoiser, self.decoder)

    def start(self, seeds: list[int], labels: np.ndarray, request: GenerationRequest) -> Denoising:
        return Denoising.start(seeds, labels, request.guidance, request.steps, self.alphas, self.latent)

    def calls(self, drawing: Denoising) -> int:
        return len(drawing.steps)

    async def step(self, drawing: Denoising) -> None:
        latents, timesteps, labels = drawing.denoiser_inputs(self.null_label)
        outputs = await self.denoiser.submit({"latents": latents, "timesteps": timesteps, "labels": labels})
        drawing.advance(outputs["noise"])

    async def decoded(self, latents: np.ndarray) -> np.ndarray:
        return as_uint8((await self.decoder.submit({"latents": latents}))["pixels"])

    async def images(self, drawing: Denoising) -> np.ndarray:
        return await self.decoded(drawing.latents)

    async def preview(self, drawing: Denoising) -> np.ndarray | None:
        if drawing.done % PREVIEW_EVERY or drawing.finished:
            return None
        return await self.decoded(drawing.clean)

    def answered(self, request: GenerationRequest) -> tuple[int, float | None]:
        return request.steps, request.guidance


@dataclass
class OneCall:
    """A GAN's request: its noise and classes, then its images."""

    noise: np.ndarray  # (n, noise) float32, each row from its image's seed
    labels: np.ndarray  # (n,) int64
    pixels: np.ndarray | None = None  # (n, H, W) uint8, once drawn
    done: int = 0

    @property
    def finished(self) -> bool:
        return self.pixels is not None


@drawer_for("cgan")
class GanDrawer:
    """The generator (model.onnx): noise and a class in, the image out, in one call behind its batcher."""

    streams_steps = False

    def __init__(self, stored: bentoml.Model, card: ModelCard):
        self.noise = int(card.model_config["noise"])
        self.classes = len(card.labels)
        self.generator = OnnxRunner(stored, SETTINGS)
        self.runners = (self.generator,)

    def start(self, seeds: list[int], labels: np.ndarray, request: GenerationRequest) -> OneCall:
        # `steps` and `guidance` are the diffusion model's: one request body serves every generator (the OpenAPI
        # document's), so the GAN takes them and its answer says what it drew with (1 step, no guidance).
        if request.label is None:  # any class: each image's own, drawn from its seed (as reproducible as it)
            labels = np.array([np.random.default_rng([s, 1]).integers(self.classes) for s in seeds], dtype=np.int64)
        return OneCall(first_noise(seeds, self.noise), labels)

    def calls(self, drawing: OneCall) -> int:
        return 1

    async def step(self, drawing: OneCall) -> None:
        outputs = await self.generator.submit({"noise": drawing.noise, "labels": drawing.labels})
        drawing.pixels, drawing.done = as_uint8(outputs["pixels"]), 1

    async def images(self, drawing: OneCall) -> np.ndarray:
        assert drawing.pixels is not None
        return drawing.pixels

    async def preview(self, drawing: OneCall) -> np.ndarray | None:
        return None

    def answered(self, request: GenerationRequest) -> tuple[int, float | None]:
        return 1, None


@register_family("generation", lambda s: (s.generation_model, s.gan_model), console_route="/generate_images")
class GenerationFamily:
    """One version of an image generator: its drawer's graphs, each behind a batcher."""

    def __init__(self, stored: bentoml.Model):
        card = ModelCard.from_metadata(stored.info.metadata)
        self.labels = card.labels
        prep = card.preprocessing
        if not isinstance(prep, ImagePreprocessing):
            raise ValueError(f"{stored.tag}: a generator's card must name its images' size (image preprocessing)")
        if card.family not in DRAWERS:
            raise ValueError(f"{stored.tag}: no drawer for a {card.family!r} generator; known: {sorted(DRAWERS)}")
        self.size = (prep.height, prep.width)
        self.drawer = DRAWERS[card.family](stored, card)
        self.runners = self.drawer.runners
        self.runner = self.runners[0]
        self.steps_taken = GENERATION_STEPS.labels(self.runner.name)
        self.images_made = GENERATED_IMAGES.labels(self.runner.name)
        self.seconds = GENERATION_SECONDS.labels(self.runner.name)

    def pipeline(self) -> "GenerationPipeline":
        return GenerationPipeline(self)

    def start(self, request: GenerationRequest) -> tuple[Drawing, list[int]]:
        """The request's images as noise, and their seeds."""
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        seeds = image_seeds(seed, request.n)
        if request.label is not None and request.label not in self.labels:
            raise BadRequest(f"label {request.label!r} is not one of this model's classes: {list(self.labels)}")
        label = self.labels.index(request.label) if request.label is not None else len(self.labels)
        labels = np.full(request.n, label, dtype=np.int64)
        return self.drawer.start(seeds, labels, request), seeds

    async def step(self, drawing: Drawing) -> None:
        await self.drawer.step(drawing)
        self.steps_taken.inc()

    async def generate(self, request: GenerationRequest, record: bool = True) -> tuple[np.ndarray, list[int]]:
        """The whole draw: (N, H, W) uint8 images and their seeds. `record`: counted and logged (not a shadow's)."""
        drawing, seeds = self.start(request)
        started = time.perf_counter()
        while not drawing.finished:
            await self.step(drawing)
        images = await self.drawer.images(drawing)
        if record:
            self.finished(request, seeds, images, started)
        return images, seeds

    def finished(self, request: GenerationRequest, seeds: list[int], images: np.ndarray, started: float) -> None:
        self.seconds.observe(time.perf_counter() - started)
        self.images_made.inc(len(images))
        log_predictions(self.runner, seeds, seeds, lambda chosen: summaries(request, chosen), no_values, no_answer)

    def answer(self, request: GenerationRequest, images: np.ndarray, seeds: list[int]) -> GeneratedImages:
        steps, guidance = self.drawer.answered(request)
        return GeneratedImages(
            images=[base64.b64encode(png(image)).decode() for image in images],
            seeds=seeds,
            label=request.label,
            steps=steps,
            guidance=guidance,
            model=self.runner.tag,
        )

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter:
        labels = tuple(dict.fromkeys(label for card in cards.values() for label in card.labels))
        return generation_routes(tuple(cards), labels)


def summaries(request: GenerationRequest, seeds: list[int]) -> list[dict[str, Any]]:
    """What the payload log keeps of a generated image: its seed and what was asked, never the image."""
    asked = {"label": request.label, "n": request.n, "steps": request.steps, "guidance": request.guidance}
    return [{"seed": seed, **asked} for seed in seeds]


def no_values(seed: int) -> dict[str, Any]:
    return {}  # the seed and the request are the whole input


def no_answer(seed: int) -> dict[str, Any]:
    return {}  # images are not logged


class GenerationPipeline(FamilyPipeline):
    """`<model>-pipeline`: seed and n (and optionally label, steps, guidance) in; UINT8 images and seeds out."""

    family: GenerationFamily

    def __init__(self, family: GenerationFamily):
        super().__init__(
            family,
            [
                TensorSpec("seed", "INT64", (1,)),
                TensorSpec("n", "INT64", (1,)),
                TensorSpec("label", "BYTES", (1,)),
                TensorSpec("steps", "INT64", (1,)),
                TensorSpec("guidance", "FP32", (1,)),
            ],
            [TensorSpec("images", "UINT8", (-1, *family.size)), TensorSpec("seeds", "INT64", (-1,))],
            required=["seed", "n"],
        )

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        fields: dict[str, Any] = {name: tensors[name][0].item() for name in ("seed", "n", "steps") if name in tensors}
        if "guidance" in tensors:
            fields["guidance"] = float(tensors["guidance"][0])
        if "label" in tensors:
            try:
                fields["label"] = tensors["label"][0].decode()
            except UnicodeDecodeError:
                raise BadRequest("label is not UTF-8") from None
        try:
            request = GenerationRequest.model_validate(fields)
        except ValueError as exc:
            raise BadRequest(f"not a generation request: {exc}") from None
        images, seeds = await self.family.generate(request, record)
        return self.tensors(images, seeds)

    @staticmethod
    def tensors(images: np.ndarray, seeds: list[int]) -> dict[str, np.ndarray]:
        return {"images": images, "seeds": np.array(seeds, dtype=np.int64)}

    @staticmethod
    def inputs(request: GenerationRequest, seeds: list[int]) -> dict[str, np.ndarray]:
        """A request as the pipeline's tensors, its seed drawn (what a shadow is sent)."""
        tensors = {"seed": np.array([seeds[0]], dtype=np.int64), "n": np.array([request.n], dtype=np.int64)}
        if "steps" in request.model_fields_set:  # what the request left out, the shadow's own defaults fill
            tensors["steps"] = np.array([request.steps], dtype=np.int64)
        if "guidance" in request.model_fields_set:
            tensors["guidance"] = np.array([request.guidance], dtype=np.float32)
        if request.label is not None:
            tensors["label"] = np.array([request.label.encode()], dtype=np.object_)
        return tensors


def wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def strip(images: np.ndarray) -> str:
    """A request's images side by side, as one base64 PNG: a stream's preview."""
    return base64.b64encode(png(np.concatenate(list(images), axis=1))).decode()


async def events(
    choice: Choice, family: GenerationFamily, request: GenerationRequest, drawing: Drawing, seeds: list[int]
) -> AsyncIterator[bytes]:
    """A `step` event per denoising step (a preview every PREVIEW_EVERY), then `done` with the images (a one-call
    generator sends `done` alone); a failure after the stream began is an `error` event. The request timeout
    covers the whole draw. A client that goes away cancels this generator at its next await: no more steps are
    submitted."""
    deadline = asyncio.get_running_loop().time() + SETTINGS.request_timeout_s
    started = time.perf_counter()
    drawer = family.drawer
    try:
        with choice.answering():
            while not drawing.finished:
                async with asyncio.timeout_at(deadline):
                    await family.step(drawing)
                    preview = await drawer.preview(drawing)
                if drawer.streams_steps:
                    shown = {"preview": strip(preview)} if preview is not None else {}
                    yield event("step", {"step": drawing.done, "of": drawer.calls(drawing), **shown})
            async with asyncio.timeout_at(deadline):
                images = await drawer.images(drawing)
            family.finished(request, seeds, images, started)
        yield event("done", family.answer(request, images, seeds).model_dump())
    except TimeoutError:
        yield event("error", {"error": f"no answer within the request timeout of {SETTINGS.request_timeout_s:g} s"})
    except ServingError as refused:
        yield event("error", {"error": str(refused)})
    except Exception:
        log.exception("generation stream failed")
        yield event("error", {"error": "the server failed while generating; the images were not made"})


def generation_routes(models: tuple[str, ...], labels: tuple[str, ...]) -> APIRouter:
    """`models`: the generators' names, the default first."""
    router = APIRouter(tags=["generation"], dependencies=[JSON_ONLY], route_class=DirectRoute)
    Body = request_model(labels, models)

    @router.post(
        "/generate_images",
        response_model=GeneratedImages,
        responses={
            **ERROR_RESPONSES,
            200: {"content": {"image/png": {}}, "description": "with `Accept: image/png` and n 1: the PNG itself"},
            406: ERROR_RESPONSES[415] | {"description": "`Accept: image/png` with n over 1"},
        },
    )
    async def generate_images(request: Request, body: Body) -> Response:  # type: ignore[valid-type]
        """Draw n images of a class (or of any), reproducibly from a seed."""
        as_png = wants_png(request)
        if as_png and body.n != 1:
            raise NotAcceptable("image/png answers one image: ask for n 1, or accept application/json")
        choice = answering(request, body.model or models[0])
        pipeline: GenerationPipeline = choice.primary
        family = pipeline.family
        with choice.answering():
            images, seeds = await family.generate(body)
        choice.mirror(lambda: pipeline.inputs(body, seeds), lambda: pipeline.tensors(images, seeds))
        if as_png:
            return Response(png(images[0]), media_type="image/png", headers=choice.version_header)
        return json_response(family.answer(body, images, seeds), choice.version_header)

    @router.post(
        "/generate_images/stream",
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {"text/event-stream": {}},
                "description": "server-sent events: `step` ({step, of, preview every few steps}), then `done` "
                "(the JSON answer of /generate_images) or `error` ({error})",
            },
        },
    )
    async def generate_images_stream(request: Request, body: Body) -> Response:  # type: ignore[valid-type]
        """Draw images as /generate_images does, watching them form: an event per denoising step."""
        choice = answering(request, body.model or models[0])
        family: GenerationFamily = choice.primary.family
        drawing, seeds = family.start(body)  # a bad request is refused before the stream begins
        return StreamingResponse(
            events(choice, family, body, drawing, seeds),
            media_type="text/event-stream",
            headers={**choice.version_header, "Cache-Control": "no-cache"},
        )

    return router
