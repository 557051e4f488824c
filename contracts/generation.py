"""The generative family's request and answer types: what a client asks of a generator and what it gets."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from contracts.sampling import GUIDANCE, MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS, STEPS
from contracts.validators import whole_number


class GenerationRequest(BaseModel):
    """What a generation request asks for (its `label` is checked against the served model's classes)."""

    model_config = ConfigDict(extra="forbid")

    n: Annotated[int, BeforeValidator(whole_number)] = Field(
        1, strict=True, ge=1, le=MAX_IMAGES, description="how many images"
    )
    seed: Annotated[int | None, BeforeValidator(whole_number)] = Field(
        None,
        strict=True,
        ge=0,
        le=MAX_SEED,
        description="image i is drawn from seed + i: the same seed gives the same images; none: the server draws "
        "one (the answer's `seeds` say which)",
    )
    label: str | None = Field(None, description="the class to draw; none: any class")
    steps: Annotated[int, BeforeValidator(whole_number)] = Field(
        STEPS, strict=True, ge=1, le=MAX_STEPS, description="denoising steps: more, finer (the diffusion model's)"
    )
    guidance: float = Field(
        GUIDANCE,
        strict=True,
        ge=0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description="classifier-free guidance: 1 draws from the class as trained, more makes it plainer (the "
        "diffusion model's)",
    )


def request_model(labels: tuple[str, ...], models: tuple[str, ...]) -> type[GenerationRequest]:
    """The request body with `label` limited to the models' classes and `model` to the served generators, the
    default first (the OpenAPI document lists both)."""
    label = Literal[labels]  # type: ignore[valid-type]
    model = Literal[models]  # type: ignore[valid-type]
    return create_model(
        "GenerationRequest",
        __base__=GenerationRequest,
        label=(label | None, Field(None, description="the class to draw; none: any class")),
        model=(
            model | None,
            Field(None, description=f"the generator: {' or '.join(models)}; none: {models[0]}"),
        ),
    )


class GeneratedImages(BaseModel):
    images: list[str] = Field(description="base64 PNG images (8-bit grey), in the order of `seeds`")
    seeds: list[int] = Field(description="each image's seed: asked for alone (n 1), it gives that image again")
    label: str | None
    steps: int = Field(description="denoising steps taken (1: a one-step generator)")
    guidance: float | None = Field(description="classifier-free guidance (none: a one-step generator)")
    model: str = Field(description="the model version that drew them, name:version")
