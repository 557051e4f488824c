"""Diffusion sampling, written once in numpy: training builds its noise schedule from here, the service and the
offline evaluation draw images with it, and neither needs torch.

DDPM training with a cosine schedule (Nichol & Dhariwal, 2021), DDIM sampling without added noise (Song et al.,
2021: deterministic once the first noise is drawn) and classifier-free guidance (Ho & Salimans, 2022).
Every image has its own seed: its first noise comes from that seed alone, and every later step works row by row,
so an image does not depend on the other images it is denoised with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SEED = 2**53 - 1  # the largest integer a JSON number keeps exactly everywhere (JavaScript, JSON Schema tools)
STEPS = 25  # DDIM steps a request takes unless it says
MAX_STEPS = 100
GUIDANCE = 3.0  # classifier-free guidance unless a request says (measured: docs/generation.md)
MAX_GUIDANCE = 10.0
MAX_IMAGES = 16  # images a request may ask for
CLEAN_BOUND = 12.0  # standard deviations: the denoised latents' estimate is kept within this (docs/generation.md)


def cosine_schedule(timesteps: int) -> np.ndarray:
    """alpha-bar_t, the share of the signal left at step t = 0..timesteps-1 (float64)."""
    s = 0.008
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1.0 - betas)


def sampling_steps(timesteps: int, steps: int) -> np.ndarray:
    """The DDIM steps' timesteps, descending and evenly spaced from the noisiest (timesteps - 1) to 0."""
    return np.unique(np.linspace(0, timesteps - 1, steps).round().astype(np.int64))[::-1]


def image_seeds(seed: int, n: int) -> list[int]:
    """The seeds of a request's n images: image i of (seed, n) is image 0 of (seed + i, 1)."""
    return [(seed + i) % (MAX_SEED + 1) for i in range(n)]


def first_noise(seeds: list[int], size: int) -> np.ndarray:
    """(n, size) float32 standard normal noise, each row from its own seed."""
    return np.stack([np.random.default_rng(s).standard_normal(size, dtype=np.float32) for s in seeds])


def guided(noise: np.ndarray, null_noise: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """Classifier-free guidance: the unconditional prediction pushed `guidance` times toward the conditional one
    (guidance 1: the conditional prediction alone). guidance: (n,)."""
    return null_noise + guidance[:, None] * (noise - null_noise)


@dataclass
class Denoising:
    """One request's images on their way from noise: `latents` at `steps[done]`, until `finished`."""

    latents: np.ndarray  # (n, latent) float32
    labels: np.ndarray  # (n,) int64 class ids (the null class: unconditional)
    guidance: np.ndarray  # (n,) float32
    steps: np.ndarray  # the timesteps still to take, descending
    alphas: np.ndarray  # the schedule's alpha-bar (cosine_schedule)
    done: int = 0
    clean: np.ndarray | None = None  # the last step's estimate of the finished latents (a preview's)

    @classmethod
    def start(
        cls, seeds: list[int], labels: np.ndarray, guidance: float, steps: int, alphas: np.ndarray, latent: int
    ) -> Denoising:
        n = len(seeds)
        return cls(
            first_noise(seeds, latent),
            np.asarray(labels, dtype=np.int64),
            np.full(n, guidance, dtype=np.float32),
            sampling_steps(len(alphas), steps),
            alphas,
        )

    @property
    def finished(self) -> bool:
        return self.done == len(self.steps)

    @property
    def timestep(self) -> int:
        return int(self.steps[self.done])

    def denoiser_inputs(self, null_label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latents, timesteps, labels) for this step: each image twice, with its class and with the null class
        (what guidance compares); 2n rows."""
        n = len(self.latents)
        latents = np.concatenate([self.latents, self.latents])
        timesteps = np.full(2 * n, self.timestep, dtype=np.float32)
        labels = np.concatenate([self.labels, np.full(n, null_label, dtype=np.int64)])
        return latents, timesteps, labels

    def advance(self, predicted: np.ndarray) -> None:
        """One DDIM step (eta 0) from the denoiser's (2n, latent) noise predictions for `denoiser_inputs`."""
        n = len(self.latents)
        noise = guided(predicted[:n], predicted[n:], self.guidance)
        a_t = self.alphas[self.timestep]
        a_next = self.alphas[self.steps[self.done + 1]] if self.done + 1 < len(self.steps) else 1.0
        # The clean estimate divides by sqrt(alpha-bar), ~5e-5 at the noisiest step: an error in the predicted noise
        # grows 20,000 times there. Bounded to where the (standardized) latents lie, and the noise made to agree.
        clean = np.clip((self.latents - np.sqrt(1 - a_t) * noise) / np.sqrt(a_t), -CLEAN_BOUND, CLEAN_BOUND)
        noise = (self.latents - np.sqrt(a_t) * clean) / np.sqrt(1 - a_t)
        self.latents = (np.sqrt(a_next) * clean + np.sqrt(1 - a_next) * noise).astype(np.float32)
        self.clean = clean.astype(np.float32)
        self.done += 1
