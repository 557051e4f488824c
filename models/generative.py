"""Generating images: a convolutional VAE, and a class-conditional denoiser of its latents (latent diffusion).

The denoising runs on `latent` numbers an image instead of 784 pixels: a step costs a small MLP, which is what
makes a diffusion model trainable on 2 CPU cores. Training goes in two stages through the one loop: the VAE first
(the task's self-supervised objective, `VAEObjective`), then the denoiser on the frozen encoder's latents
(`LatentDiffusion.forward`). Served are three graphs: the denoiser's step, the decoder, and the VAE's score of an
image (`DenoiserStep`, `Decoder`, `VAEScore`); the sampler between them is numpy (contracts/sampling.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contracts.sampling import cosine_schedule
from models.registry import register_net


@dataclass
class LatentDiffusionConfig:
    image_size: int = 28
    num_classes: int = 10  # and one more label id, num_classes: no class (what guidance compares with)
    latent: int = 32
    channels: tuple[int, int] = (32, 64)
    kl_weight: float = 1.0
    hidden: int = 512
    blocks: int = 4
    timesteps: int = 1000
    label_dropout: float = 0.1  # the share of training rows shown without their class (classifier-free guidance)


class VAE(nn.Module):
    """28x28 grey images in [0, 1] <-> `latent` numbers: two stride-2 convs down, two transposed convs up (no
    full-resolution layer: they tripled the cost of an epoch on 2 cores)."""

    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        c1, c2 = config.channels
        self.side, self.channels = config.image_size // 4, c2
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * self.side * self.side, 2 * config.latent),
        )
        self.expand = nn.Linear(config.latent, c2 * self.side * self.side)
        self.decoder = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),
        )

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> the posterior's mean and log-variance, (B, latent) each."""
        mean, log_var = self.encoder(pixels).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, 1, H, W) logits of the pixels' brightness."""
        h = self.expand(latents).view(-1, self.channels, self.side, self.side)  # not len(): the batch stays dynamic
        return self.decoder(h)

    def negative_elbo(self, pixels: torch.Tensor, latents: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor):
        """Per image, in nats: the reconstruction's binary cross-entropy (summed over pixels) and the KL divergence
        of the posterior from N(0, I)."""
        # Binary cross-entropy with logits, written out in its stable form: exported as one op, ONNX Runtime's
        # version overflowed to inf where the trained decoder is sure of a pixel.
        logits = self.decode(latents)
        reconstruction = logits.clamp(min=0) - logits * pixels + torch.log1p(torch.exp(-logits.abs()))
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        return reconstruction.flatten(1).sum(1), kl


class LatentNorm(nn.Module):
    """Latents scaled to mean 0 and std 1 per dimension, by statistics gathered over every batch trained on (the
    encoder is frozen by then, so they settle to the training split's): the diffusion's data."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("seen", torch.zeros(()))

    @torch.no_grad()
    def update(self, latents: torch.Tensor) -> None:
        n, total = len(latents), self.seen + len(latents)
        delta = latents.mean(0) - self.mean
        batch_var = latents.var(0, correction=0)
        self.var.copy_((self.seen * self.var + n * batch_var) / total + delta.pow(2) * self.seen * n / total.pow(2))
        self.mean.add_(delta * n / total)
        self.seen.copy_(total)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) / self.var.sqrt().clamp(min=1e-4)

    def inverse(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled * self.var.sqrt().clamp(min=1e-4) + self.mean


def timestep_embedding(timesteps: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) float timesteps -> (B, size) sines and cosines of geometrically spaced frequencies."""
    half = size // 2
    frequencies = torch.exp(
        -math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps[:, None].float() * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Block(nn.Module):
    """A residual MLP block told the timestep and class through a per-row scale and shift."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.condition = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.condition(condition).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """(noisy latents, timestep, class id) -> the noise in them."""

    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        hidden = config.hidden
        self.time = nn.Sequential(nn.Linear(128, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(config.num_classes + 1, hidden)
        self.input = nn.Linear(config.latent, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(config.blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, config.latent))

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = F.silu(self.time(timestep_embedding(timesteps, 128)) + self.label(labels))
        h = self.input(latents)
        for block in self.blocks:
            h = block(h, condition)
        return self.output(h)


@register_net("latent-diffusion", LatentDiffusionConfig)
class LatentDiffusion(nn.Module):
    """The VAE, the latents' scaling and the denoiser. forward(pixels, labels) -> each image's denoising loss
    (mean squared error of the predicted noise at a random timestep), with the VAE frozen."""

    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        self.config = config
        self.vae = VAE(config)
        self.norm = LatentNorm(config.latent)
        self.denoiser = Denoiser(config)
        alphas = torch.tensor(cosine_schedule(config.timesteps), dtype=torch.float32)
        self.register_buffer("alphas", alphas, persistent=False)  # rebuilt from the config, never stored

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, _ = self.vae.encode(pixels)
            if self.training:
                self.norm.update(mean)
            clean = self.norm(mean)
        b = len(pixels)
        timesteps = torch.randint(0, self.config.timesteps, (b,), device=pixels.device)
        noise = torch.randn_like(clean)
        a = self.alphas[timesteps][:, None]
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        if self.training:
            dropped = torch.rand(b, device=pixels.device) < self.config.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.config.num_classes), labels)
        predicted = self.denoiser(noisy, timesteps.float(), labels)
        return (predicted - noise).pow(2).mean(1)


class VAEObjective(nn.Module):
    """The first stage: the VAE's negative ELBO per pixel (labels unused), with a reparameterized latent."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.vae = net.vae
        self.kl_weight = net.config.kl_weight

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, log_var = self.vae.encode(pixels)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        latents = mean + (0.5 * log_var).exp() * noise
        reconstruction, kl = self.vae.negative_elbo(pixels, latents, mean, log_var)
        return (reconstruction + self.kl_weight * kl).mean() / pixels[0].numel()


class DenoiserStep(nn.Module):
    """Served: (latents, timesteps, labels) -> the predicted noise (the sampler's model call)."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.denoiser = net.denoiser

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.denoiser(latents, timesteps, labels)


class Decoder(nn.Module):
    """Served: scaled latents (the diffusion's) -> (B, 1, H, W) pixels in [0, 1]."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.vae, self.norm = net.vae, net.norm

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.vae.decode(self.norm.inverse(latents)))


class VAEScore(nn.Module):
    """Served: (B, 1, H, W) pixels in [0, 1] -> the VAE's negative ELBO per image at the posterior's mean (nats):
    how poorly the VAE explains an image, a candidate out-of-distribution score."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.vae = net.vae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.vae.encode(pixels)
        reconstruction, kl = self.vae.negative_elbo(pixels, mean, mean, log_var)
        return reconstruction + kl
