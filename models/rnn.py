"""A recurrent forecaster: an LSTM or GRU encoder over the history, a direct multi-horizon head.

Why a direct head rather than a decoder that feeds back its own predictions: one forward
pass gives all `horizon` steps, errors do not compound step by step, and the exported
ONNX graph has no loop. Serving asks for 1..horizon steps and takes the first ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_net


@dataclass
class RNNConfig:
    cell: str = "lstm"  # "lstm" or "gru"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    horizon: int = 52


CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@register_net("rnn", RNNConfig)
class RNNForecaster(nn.Module):
    def __init__(self, config: RNNConfig):
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {config.cell!r}")
        self.config = config
        self.rnn = CELLS[config.cell](
            input_size=1,
            hidden_size=config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.hidden, config.horizon))

    def embed(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # history: (B, T) scaled values -> (B, horizon) scaled forecasts, the last state (B, hidden)
        out, _ = self.rnn(history.unsqueeze(-1))  # (B, T, hidden)
        return self.head(out[:, -1]), out[:, -1]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.embed(history)[0]
