"""A class-conditional GAN: a DCGAN-style generator against a projection discriminator (Miyato & Koyama, 2018)
with spectral normalization and the hinge loss (SN-GAN).

Spectral normalization and the hinge loss rather than WGAN-GP: the gradient penalty needs a second backward pass
through the discriminator every step, which would double the cost of an epoch on 2 cores; spectral norm bounds
the discriminator for the price of one power iteration per layer. Both nets learn from one loss in one backward
(the one loop's single optimizer): the discriminator's terms see the generated images detached, and the
generator's term sees a discriminator whose weights do not require gradients (simultaneous updates).
Served is the generator alone (`GeneratorGraph`): noise and a class in, an image out, in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.registry import register_net


@dataclass
class GANConfig:
    image_size: int = 28
    num_classes: int = 10
    noise: int = 64  # the generator's input: a standard normal vector per image
    label_embedding: int = 32
    channels: tuple[int, int] = (32, 64)  # (64, 128): 4x the cost of an epoch
    slope: float = 0.2  # LeakyReLU in the discriminator


class Generator(nn.Module):
    """(B, noise) standard normal noise and (B,) class ids -> (B, 1, H, W) pixels in [0, 1]."""

    def __init__(self, config: GANConfig):
        super().__init__()
        c1, c2 = config.channels
        self.side, self.width = config.image_size // 4, c2
        self.label = nn.Embedding(config.num_classes, config.label_embedding)
        self.project = nn.Sequential(
            nn.Linear(config.noise + config.label_embedding, c2 * self.side * self.side, bias=False),
            nn.BatchNorm1d(c2 * self.side * self.side),
            nn.ReLU(),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1, bias=False),  # (B, c1, 14, 14)
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([noise, self.label(labels)], dim=1))
        return torch.sigmoid(self.upsample(h.view(-1, self.width, self.side, self.side)))


class Discriminator(nn.Module):
    """(B, 1, H, W) pixels in [0, 1] and (B,) class ids -> (B,) realness: a linear read of the image's features
    plus their projection on the class's embedding (how the class conditions it)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        c1, c2 = config.channels
        side = config.image_size // 4
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(1, c1, 4, stride=2, padding=1)),  # (B, c1, 14, 14)
            nn.LeakyReLU(config.slope),
            spectral_norm(nn.Conv2d(c1, c2, 4, stride=2, padding=1)),  # (B, c2, 7, 7)
            nn.LeakyReLU(config.slope),
            nn.Flatten(),
            spectral_norm(nn.Linear(c2 * side * side, 256)),
            nn.LeakyReLU(config.slope),
        )
        self.real = spectral_norm(nn.Linear(256, 1))
        self.label = spectral_norm(nn.Embedding(config.num_classes, 256))

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(pixels * 2.0 - 1.0)  # centred on 0, as the convolutions like it
        return self.real(h)[:, 0] + (self.label(labels) * h).sum(1)


@register_net("cgan", GANConfig)
class ConditionalGAN(nn.Module):
    """The generator and the discriminator. forward(pixels, labels) -> each row's hinge losses (the discriminator's
    on the real image and on a generated one of the same class, plus the generator's), for the one optimizer."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(pixels), self.config.noise, device=pixels.device)
        fake = self.generator(noise, labels)
        judged = self.discriminator(torch.cat([pixels, fake.detach()]), torch.cat([labels, labels]))
        real_score, fake_score = judged.chunk(2)
        discriminator_loss = F.relu(1.0 - real_score) + F.relu(1.0 + fake_score)
        # The generator's term reaches the generator only: autograd records whether a weight requires a gradient
        # when it is used, so the discriminator's weights are switched off for this one call.
        weights = list(self.discriminator.parameters())
        for weight in weights:
            weight.requires_grad_(False)
        try:
            generator_loss = -self.discriminator(fake, labels)
        finally:
            for weight in weights:
                weight.requires_grad_(True)
        return discriminator_loss + generator_loss


class GeneratorGraph(nn.Module):
    """Served: (noise, labels) -> (B, 1, H, W) pixels in [0, 1], the generator in eval mode."""

    def __init__(self, net: ConditionalGAN):
        super().__init__()
        self.generator = net.generator

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, labels)
