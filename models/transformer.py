"""A Transformer encoder text classifier: token + position embeddings, self-attention that
ignores padding, mean pooling over the real tokens, a linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model


@dataclass
class TransformerConfig:
    vocab_size: int = 8000
    max_tokens: int = 128  # positions the net knows; requests are truncated to this
    d_model: int = 128
    heads: int = 4
    layers: int = 2
    ff: int = 256
    dropout: float = 0.2  # 65k short glosses overfit a 1M-parameter embedding quickly
    num_classes: int = 26


@register_model("transformer", TransformerConfig)
class TransformerClassifier(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=0)
        self.positions = nn.Embedding(config.max_tokens, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.heads,
            config.ff,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: the padded fast path would be one more computation to keep equal to ONNX.
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.d_model, config.num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T) int64, mask 1 = token, 0 = padding -> logits (B, num_classes)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)  # (B, T, C)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # mean over real tokens
        return self.head(pooled)
