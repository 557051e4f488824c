"""A Transformer encoder text classifier: token + position embeddings, self-attention that
ignores padding, mean pooling over the real tokens, a linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_net


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


@register_net("transformer", TransformerConfig)
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

    def blocks(self) -> list[nn.Module]:
        """The body, input first (what fine-tuning keeps from a parent); `head` is rebuilt for new classes. The
        last encoder layer and the final norm are one block: the norm only rescales that layer's output."""
        *early, last = self.encoder.layers
        return [nn.ModuleList([self.tokens, self.positions]), *early, nn.ModuleList([last, self.norm])]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T) int64, mask 1 = token, 0 = padding -> normalized states (B, T, C)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)  # (B, T, C)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.norm(x)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # -> logits (B, num_classes), the pooled states (B, C)
        x = self.encode(input_ids, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # mean over real tokens
        return self.head(pooled), pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids, attention_mask)[0]


class MaskedLanguageModel(nn.Module):
    """Self-supervised pretraining of a TransformerClassifier's encoder on unlabelled texts (BERT's objective):
    predict the tokens hidden behind [MASK] from both sides. The output layer is the token embedding itself
    (tied), so nothing but the encoder's weights is kept; the classifier's head is trained afterwards."""

    def __init__(self, net: TransformerClassifier, mask_id: int, special_ids: int, rate: float = 0.15):
        super().__init__()
        self.net, self.mask_id, self.special_ids, self.rate = net, mask_id, special_ids, rate
        d = net.config.d_model
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))  # BERT's prediction head
        self.scale = d**-0.5  # embeddings are N(0, 1): unscaled dot products start as logits of std sqrt(d)
        self.bias = nn.Parameter(torch.zeros(net.config.vocab_size))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The cross-entropy of the hidden tokens. 15% of the real tokens are chosen; of those 80% become
        [MASK], 10% a random token, 10% stay (so the encoder cannot trust unmasked tokens blindly)."""
        draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
        chosen = (draw < self.rate) & (attention_mask == 1)  # (B, T)
        replace = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
        randoms = torch.randint(self.special_ids, self.net.config.vocab_size, input_ids.shape, generator=generator).to(
            input_ids.device
        )
        corrupted = torch.where(chosen & (replace < 0.8), self.mask_id, input_ids)
        corrupted = torch.where(chosen & (replace >= 0.8) & (replace < 0.9), randoms, corrupted)
        states = self.transform(self.net.encode(corrupted, attention_mask)[chosen])  # (N, C): chosen positions
        logits = self.scale * states @ self.net.tokens.weight.T + self.bias  # (N, vocab)
        return nn.functional.cross_entropy(logits.float(), input_ids[chosen])
