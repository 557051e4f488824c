"""Out-of-distribution scores, exported inside each model's graph: `Scored(net, score)` answers with the net's
output and an `ood_score` per row, computed in the same call as the prediction.

A score is a sum of parts, each a statistic of the training split measured in standard deviations of the
validation split (0: typical of validation data; higher: less like the training data). What a family's parts
are is its task's choice (training/tasks); they are fitted once, after training, and stored as buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


class Mahalanobis(nn.Module):
    """The smallest Mahalanobis distance (squared) from a feature vector to a class mean, with the covariance
    shared by the classes (Lee et al., 2018). One class: the distance to the training data's mean."""

    def __init__(self, means: torch.Tensor, whitening: torch.Tensor):
        super().__init__()
        self.register_buffer("means", (means @ whitening.T).float())  # (K, D), whitened
        self.register_buffer("whitening", whitening.float())  # (D, D): W with W^T W = covariance^-1

    @classmethod
    def fit(cls, features: torch.Tensor, classes: torch.Tensor | None = None, ridge: float = 1e-4) -> Mahalanobis:
        """(N, D) features of the training split and their (N,) class ids (None: one class)."""
        x = features.double()
        ids = classes if classes is not None else torch.zeros(len(x), dtype=torch.long)
        present, ids = torch.unique(ids, return_inverse=True)  # a class absent from the rows has no mean
        means = torch.stack([x[ids == k].mean(0) for k in range(len(present))])
        centred = x - means[ids]
        covariance = centred.T @ centred / len(x)
        # A small ridge keeps the inverse finite where features never vary (dead ReLUs).
        covariance += ridge * covariance.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
        whitening = torch.linalg.cholesky(torch.linalg.inv(covariance)).T
        return cls(means, whitening)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features @ self.whitening.T  # (B, D)
        distances = (z * z).sum(1, keepdim=True) - 2 * z @ self.means.T + (self.means * self.means).sum(1)  # (B, K)
        return distances.min(1).values


class TokenSurprise(nn.Module):
    """A text's mean surprise (-log frequency) of its tokens under the training split's token counts."""

    def __init__(self, surprise: torch.Tensor):
        super().__init__()
        self.register_buffer("surprise", surprise.float())  # (vocab,)

    @classmethod
    def fit(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int) -> TokenSurprise:
        counts = torch.bincount(input_ids[attention_mask == 1], minlength=vocab_size).double() + 1.0  # add-one
        return cls(-torch.log(counts / counts.sum()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(self.surprise.dtype)
        return (self.surprise[input_ids] * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def window_shape(history: torch.Tensor) -> torch.Tensor:
    """(B, T) scaled history (relative to its last value) -> (B, 3): the size of its steps (log std), its trend
    (mean step) and its spread around its own mean (log std: the seasonal swing). Not its level, which the
    forecaster is built to ignore (its input is relative to the last value)."""
    steps = history[:, 1:] - history[:, :-1]
    spread = history - history.mean(1, keepdim=True)
    return torch.stack(
        [
            torch.log(steps.std(1, correction=0) + 1e-6),
            steps.mean(1),
            torch.log(spread.std(1, correction=0) + 1e-6),
        ],
        1,
    )


# What a part reads: (the net's output, its features, the net's inputs) -> the part module's arguments.
Select = Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], tuple[torch.Tensor, ...]]


def features_of(output: torch.Tensor, features: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple:
    return (features,)


def inputs_of(output: torch.Tensor, features: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple(inputs)


def window_of(output: torch.Tensor, features: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple:
    return (window_shape(inputs[0]),)


@torch.no_grad()
def embedded(net: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """The net's features (its `embed`) of batches of inputs, concatenated."""
    return torch.cat([net.embed(*inputs)[1] for inputs in batches])


class Scored(nn.Module):
    """`net` with an OOD score: forward(*inputs) -> (the net's output, (B,) score).

    The net must have `embed(*inputs) -> (output, features)`. Each part gives raw values; the score is the sum
    of the parts after standardizing each by its validation mean and std (`calibrate`)."""

    def __init__(self, net: nn.Module, parts: dict[str, nn.Module], select: dict[str, Select]):
        super().__init__()
        self.net = net
        self.parts = nn.ModuleDict(parts)
        self.select = select  # part name -> (output, features, inputs) -> the part module's arguments
        self.register_buffer("centre", torch.zeros(len(parts)))
        self.register_buffer("spread", torch.ones(len(parts)))

    def raw_parts(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, features = self.net.embed(*inputs)
        values = [part(*self.select[name](output, features, inputs)) for name, part in self.parts.items()]
        return output, torch.stack(values, 1)  # (B, parts)

    @torch.no_grad()
    def calibrate(self, batches: Sequence[tuple[torch.Tensor, ...]]) -> None:
        """Centre and scale each part on held-out (validation) inputs."""
        values = torch.cat([self.raw_parts(*inputs)[1] for inputs in batches]).double()
        self.centre = values.mean(0).float()
        # A part that hardly varies over a few validation rows (a fine-tune's) must not be divided by ~0: its
        # spread is at least a thousandth of its centre.
        self.spread = torch.maximum(values.std(0), 1e-3 * values.mean(0).abs()).clamp(min=1e-6).float()

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, values = self.raw_parts(*inputs)
        return output, ((values - self.centre) / self.spread).sum(1)
