"""Image generation: Fashion-MNIST drawn anew by a class-conditional latent diffusion model (models/generative.py).

Trained in two stages through the one loop: the VAE as the self-supervised objective (--pretrain-epochs), then the
denoiser (--epochs). Served are three graphs: model.onnx (the denoiser's step, what the sampler calls every step),
decoder.onnx (latents to pixels) and vae_score.onnx (the VAE's negative ELBO of an image). The card measures the
samples with this project's own CNN (training/image_quality.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import torch
from sklearn.metrics import pairwise_distances
from torch import nn
from torch.utils.data import TensorDataset

from contracts.preprocessing import ImagePreprocessing
from contracts.sampling import GUIDANCE, STEPS, Denoising, cosine_schedule, image_seeds
from contracts.tensors import TensorSpec
from models.generative import Decoder, DenoiserStep, VAEObjective, VAEScore
from training.config import TrainConfig
from training.image_quality import CnnJudge, frechet_distance
from training.ood import detection
from training.ood_sets import image_sets
from training.tasks.base import Companion, Predict, Prepared, Task, fingerprint_arrays, register_task, split_indices
from training.tasks.images import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist

LATENT = 32  # LatentDiffusionConfig.latent: the served graphs' latent axis
SAMPLES = 5_000  # generated images the quality figures are measured on (--dry-run: DRY_SAMPLES)
DRY_SAMPLES = 200
GRID_COLUMNS = 8


class FashionGeneratorTask(Task):
    """What Fashion-MNIST's generators share: the data (pixels in [0, 1] and their classes), the judge of their
    samples (the stored CNN, so they train after it), the class-means baseline and the request example."""

    kind = "image-generation"
    key_metric = "frechet_cnn"  # lower is better
    scores_ood = False  # a request is a seed and a class: there is no input to call unusual
    artifacts = ("samples.png",)
    needs = ("fashion-cnn",)  # the judge of its samples (training/image_quality.py)

    def load_data(self, cfg: TrainConfig) -> Prepared:
        root = Path(cfg.data) if cfg.data else FASHION_MNIST_DIR
        x_train, y_train, x_test, y_test = load_fashion_mnist(root)
        train_idx, val_idx = split_indices(len(x_train), cfg.val_fraction, cfg.seed)
        if cfg.dry_run:
            train_idx, val_idx, x_test, y_test = train_idx[:1024], val_idx[:256], x_test[:512], y_test[:512]
        prep = ImagePreprocessing(mean=0.0, std=1.0)  # pixels / 255: what the VAE's cross-entropy reads

        def dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            labels = torch.from_numpy(y.astype(np.int64))
            return TensorDataset(torch.from_numpy(prep.normalize(x)), labels, labels)  # (pixels, class) -> class

        return Prepared(
            train=dataset(x_train[train_idx], y_train[train_idx]),
            val=dataset(x_train[val_idx], y_train[val_idx]),
            test=dataset(x_test, y_test),
            source=str(root),
            fingerprint=fingerprint_arrays(x_train, y_train, x_test, y_test),
            preprocessing=prep,
            labels=list(FASHION_MNIST_LABELS),
            extras={"dry_run": cfg.dry_run, "seed": cfg.seed},
        )

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {"num_classes": len(data.labels)}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        return outputs.mean()  # the net answers with each image's training loss

    def example(self, data: Prepared) -> dict[str, Any]:
        return {"n": 4, "seed": 0, "label": data.labels[7]}

    def ood_scorer(self, net: nn.Module, data: Prepared):
        raise NotImplementedError("a generator's answers carry no OOD score")

    def reference_summaries(self, data: Prepared) -> list[dict[str, Any]]:
        return []  # a request's inputs are a seed, a class and a count: nothing drifts

    def sampled_labels(self, data: Prepared) -> np.ndarray:
        """The classes of the images the quality figures are measured on: as many of each."""
        return np.arange(DRY_SAMPLES if data.extras["dry_run"] else SAMPLES) % len(data.labels)

    def quality(
        self, pixels: np.ndarray, labels: np.ndarray, data: Prepared, run_dir: Path, **others: np.ndarray
    ) -> dict[str, Any]:
        """Generated images of the classes `labels`, judged by the stored CNN against the test images: the Fréchet
        CNN distance, the CNN's agreement with the class asked for, and the spread within each class beside the
        test images' (mode collapse shows as a spread well under theirs); a grid of samples in run_dir. `others`:
        more images by name, each's Fréchet distance as `frechet_cnn_<name>`."""
        judge = CnnJudge.newest()
        test_pixels, test_labels = data.test.tensors[0].numpy(), data.test.tensors[1].numpy()
        real, _ = judge.judge(test_pixels)
        generated, classes = judge.judge(pixels)
        half = len(real) // 2
        plot_grid(pixels, labels, data.labels, run_dir / "samples.png")
        return {
            "frechet_cnn": round(frechet_distance(generated, real), 3),
            "cnn_agreement": round(float(np.mean(classes == labels)), 4),
            "frechet_cnn_real_halves": round(frechet_distance(real[:half], real[half:]), 3),
            "class_spread": round(class_spread(generated, labels), 3),
            "class_spread_test": round(class_spread(real, test_labels), 3),
            **{
                f"frechet_cnn_{name}": round(frechet_distance(judge.judge(x)[0], real), 3) for name, x in others.items()
            },
            "judge": judge.tag,
            "samples": len(labels),
        }

    def baseline(self, data: Prepared) -> dict[str, dict[str, Any]]:
        """Each class's mean test image, as often as the samples show it: what a generator must beat."""
        judge = CnnJudge.newest()
        pixels, targets = data.test.tensors[0].numpy(), data.test.tensors[1].numpy()
        means = np.stack([pixels[targets == k].mean(0) for k in range(len(data.labels))])
        labels = np.arange(len(pixels)) % len(data.labels)
        features, classes = judge.judge(means[labels])
        return {
            "class_means": {
                "frechet_cnn": round(frechet_distance(features, judge.judge(pixels)[0]), 3),
                "cnn_agreement": round(float(np.mean(classes == labels)), 4),
            }
        }


class ImageGenerationTask(FashionGeneratorTask):
    name = "fashion-diffusion"
    model = "latent-diffusion"
    inputs = (
        TensorSpec("latents", "FP32", ("batch", LATENT)),
        TensorSpec("timesteps", "FP32", ("batch",)),
        TensorSpec("labels", "INT64", ("batch",)),
    )
    output_name = "noise"
    train_defaults: ClassVar[dict[str, Any]] = {
        "pretrain_epochs": 12,  # the VAE
        "epochs": 30,  # the denoiser
        "batch_size": 256,
        "lr": 2e-3,
        "patience": 30,  # the denoising loss is noisy from epoch to epoch: the schedule, not patience, ends it
    }
    expected_seconds = 600.0

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {**super().model_config(data), "latent": LATENT}

    def pretext(self, net: nn.Module) -> nn.Module:
        return VAEObjective(net)

    def graph(self, net: nn.Module) -> nn.Module:
        return DenoiserStep(net)

    def export_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(0)
        batches = []
        for size in (16, 3):
            latents = torch.randn(size, LATENT, generator=generator)
            timesteps = torch.randint(0, 1000, (size,), generator=generator).float()
            labels = torch.randint(0, len(data.labels) + 1, (size,), generator=generator)
            batches.append((latents, timesteps, labels))
        return batches

    def companions(self, net: nn.Module, data: Prepared) -> list[Companion]:
        generator = torch.Generator().manual_seed(1)
        latents = [torch.randn(size, LATENT, generator=generator) for size in (16, 3)]
        pixels = [data.test.tensors[0][:16], data.test.tensors[0][16:19]]
        image = TensorSpec("pixels", "FP32", ("batch", 1, 28, 28))
        return [
            Companion("decoder.onnx", Decoder(net), (self.inputs[0],), "pixels", [(z,) for z in latents]),
            Companion("vae_score.onnx", VAEScore(net), (image,), "negative_elbo", [(x,) for x in pixels], 1e-2),
        ]

    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        """The image OOD sets, as pixels in [0, 1]: what the VAE's score is measured against."""
        sets = image_sets((28, 28), np.random.default_rng(0))
        return {
            name: [(torch.from_numpy(pixels[:, None].astype(np.float32) / 255.0),)] for name, pixels in sets.items()
        }

    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        """Samples from the exported graphs, judged by the stored CNN, the VAE's own samples beside them; the VAE's
        score against the OOD sets."""
        decoder = ort.InferenceSession(str(run_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
        labels = self.sampled_labels(data)
        started = time.monotonic()
        pixels = sample(predict, decoder, labels, seed=data.extras["seed"], null_label=len(data.labels))
        seconds = time.monotonic() - started
        prior = decoder.run(None, {"latents": first_latents(len(labels), data.extras["seed"] + 1)})[0]
        return {
            **self.quality(pixels, labels, data, run_dir, vae=prior),  # the VAE's own samples: frechet_cnn_vae
            "steps": STEPS,
            "guidance": GUIDANCE,
            "images_per_second": round(len(labels) / seconds, 1),
            "vae_ood": vae_ood(run_dir / "vae_score.onnx", data.test.tensors[0].numpy(), self.ood_sets(data)),
        }


def first_latents(n: int, seed: int) -> np.ndarray:
    """Standard normal latents: the VAE's own prior (its samples are the Fréchet distance's "vae" row)."""
    return np.random.default_rng(seed).standard_normal((n, LATENT), dtype=np.float32)


def sample(
    predict: Predict, decoder: ort.InferenceSession, labels: np.ndarray, seed: int, null_label: int, batch: int = 500
) -> np.ndarray:
    """Images of the given classes, drawn as the service draws them (contracts/sampling.py); (N, 1, 28, 28)."""
    alphas = cosine_schedule(1000)
    pixels = []
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        denoising = Denoising.start(image_seeds(seed + start, len(chunk)), chunk, GUIDANCE, STEPS, alphas, LATENT)
        while not denoising.finished:
            inputs = denoising.denoiser_inputs(null_label)
            denoising.advance(predict(*(torch.from_numpy(a) for a in inputs)))
        pixels.append(decoder.run(None, {"latents": denoising.latents})[0])
    return np.concatenate(pixels)


def vae_ood(path: Path, test: np.ndarray, sets: dict[str, list[tuple[torch.Tensor, ...]]]) -> dict[str, Any]:
    """AUROC of the VAE's negative ELBO (higher: less like the training data) per OOD set, test images inside.
    An AUROC under 0.5 is the known trap of likelihood scores: the set looks *more* typical than real data."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inside = np.concatenate([session.run(None, {"pixels": test[i : i + 1000]})[0] for i in range(0, len(test), 1000)])
    outside = {name: session.run(None, {"pixels": batch[0][0].numpy()})[0] for name, batch in sets.items()}
    return {
        "score": "VAE negative ELBO at the posterior mean (nats)",
        "sets": {name: detection(inside, values) for name, values in outside.items()},
        "all": detection(inside, np.concatenate(list(outside.values()))),
    }


def class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """The mean distance between two images' CNN features within a class, averaged over the classes."""
    return float(np.mean([pairwise_distances(features[labels == k]).mean() for k in np.unique(labels)]))


def plot_grid(pixels: np.ndarray, labels: np.ndarray, names: list[str], path: Path) -> None:
    """A row of samples per class, the class named on the left."""
    classes = len(names)
    fig, axes = plt.subplots(classes, GRID_COLUMNS, figsize=(GRID_COLUMNS * 0.9, classes * 0.9))
    for k in range(classes):
        chosen = np.flatnonzero(labels == k)[:GRID_COLUMNS]
        for column in range(GRID_COLUMNS):
            ax = axes[k, column]
            ax.axis("off")
            if column < len(chosen):
                ax.imshow(pixels[chosen[column], 0], cmap="gray", vmin=0, vmax=1)
        axes[k, 0].text(-4, 14, names[k], ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.2, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)
    plt.close(fig)


register_task(ImageGenerationTask())
