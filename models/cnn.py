"""A small image classifier: two conv blocks (conv -> batch norm -> ReLU -> pool), dropout, an MLP head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_net


@dataclass
class CNNConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    channels: tuple[int, int] = (16, 32)  # (32, 64) gains little here and trains 3x slower on 2 cores
    hidden: int = 128
    dropout: float = 0.3


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # Two 3x3 convs see a 5x5 field at the cost of ~2x one conv; bias is redundant before batch norm.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_net("cnn", CNNConfig)
class CNN(nn.Module):
    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.features = nn.Sequential(
            _conv_block(config.in_channels, c1),
            _conv_block(c1, c2),
            nn.Dropout(config.dropout / 2),
        )
        side = config.image_size // 4  # two 2x2 pools
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, config.hidden),
            nn.BatchNorm1d(config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def blocks(self) -> list[nn.Module]:
        """The body, input first (what fine-tuning keeps from a parent); `head` is rebuilt for new classes."""
        return [self.features[0], self.features[1]]

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # pixels: (B, C, H, W) float, already normalized -> logits (B, num_classes), the last conv block's
        # channel means (B, channels[1]): what the OOD score measures (models/ood.py)
        features = self.features(pixels)
        return self.head(features), features.mean((2, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels)[0]
