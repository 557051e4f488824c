"""PyTorch eager models from the platform's training checkpoints (the FastAPI peer and the benchmark)."""

from __future__ import annotations

from typing import Any

import torch

from contracts.card import ModelCard
from models import build_model, config_from_dict


def eager_model(metadata: dict[str, Any], checkpoint: str) -> torch.nn.Module:
    """The trained net from its best checkpoint (a state dict: weights_only, nothing unpickled)."""
    card = ModelCard.from_metadata(metadata)
    assert card.family, "an imported model has no net to run eagerly"
    net = build_model(card.family, config_from_dict(card.family, card.model_config))
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return net.eval()
