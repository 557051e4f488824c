"""Image generation in one step: Fashion-MNIST drawn by a class-conditional GAN (models/gan.py).

Trained by the one loop like every net: the generator and the discriminator learn from one loss with Adam's
GAN settings (`adam_beta1` 0.5), and the schedule ends the run (its losses do not say how good the images are,
so the last epoch is kept). Served is the generator alone, model.onnx: (noise, labels) -> pixels, one call per
image. Judged on the same figures as the diffusion model (training/tasks/generation.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from contracts.sampling import first_noise, image_seeds
from contracts.tensors import TensorSpec
from models.gan import GeneratorGraph
from training.tasks.base import Predict, Prepared, register_task
from training.tasks.generation import FashionGeneratorTask

NOISE = 64  # GANConfig.noise: the served graph's noise axis


class ImageGANTask(FashionGeneratorTask):
    name = "fashion-gan"
    model = "cgan"
    inputs = (TensorSpec("noise", "FP32", ("batch", NOISE)), TensorSpec("labels", "INT64", ("batch",)))
    output_name = "pixels"
    selects_by_validation = False
    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 20,  # 12 gave Fréchet 7.4 and agreement 0.81; 20: 4.4 and 0.87 (docs/generation.md)
        "batch_size": 128,
        "lr": 2e-4,
        "weight_decay": 0.0,
        "adam_beta1": 0.5,  # Adam's for GANs (Radford et al., 2016)
        "warmup_steps": 0,
    }
    expected_seconds = 380.0

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {**super().model_config(data), "noise": NOISE}

    def graph(self, net: nn.Module) -> nn.Module:
        return GeneratorGraph(net)

    def export_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(0)
        return [
            (torch.randn(size, NOISE, generator=generator), torch.randint(0, len(data.labels), (size,)))
            for size in (16, 3)
        ]

    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        return {}  # the generator scores nothing

    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        """Samples from the exported generator, drawn from their seeds as the service draws them."""
        labels = self.sampled_labels(data)
        started = time.monotonic()
        pixels = draw(predict, labels, seed=data.extras["seed"])
        seconds = time.monotonic() - started
        return {**self.quality(pixels, labels, data, run_dir), "images_per_second": round(len(labels) / seconds, 1)}


def draw(predict: Predict, labels: np.ndarray, seed: int, batch: int = 500) -> np.ndarray:
    """Images of the given classes, image i from seed + i; (N, 1, 28, 28) pixels in [0, 1]."""
    pixels = []
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        noise = first_noise(image_seeds(seed + start, len(chunk)), NOISE)
        pixels.append(predict(torch.from_numpy(noise), torch.from_numpy(chunk.astype(np.int64))))
    return np.concatenate(pixels)


register_task(ImageGANTask())
