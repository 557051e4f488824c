"""A trained net's weights beside its graph, as safetensors: tensors and nothing else, so reading them runs no code
(a pickle would). What fine-tuning starts from (training/tasks/transfer.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "weights.safetensors"


def save_weights(net: nn.Module, path: Path) -> Path:
    """`net`'s state_dict at `path`: each tensor copied, so tensors sharing memory are stored apart."""
    save_file({name: tensor.detach().cpu().clone().contiguous() for name, tensor in net.state_dict().items()}, path)
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)
