"""PyTorch eager models from the platform's training checkpoints (the FastAPI peer and the benchmark)."""

from __future__ import annotations

from typing import Any

import torch

from models import build_model, config_from_dict


def eager_model(metadata: dict[str, Any], checkpoint: str) -> torch.nn.Module:
    """The trained net from its best checkpoint (a state dict: weights_only, nothing unpickled)."""
    net = build_model(metadata["family"], config_from_dict(metadata["family"], metadata["model_config"]))
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return net.eval()
