"""The generative nets: the latents' scaling, and the two training stages."""

import torch

from models import build_model
from models.generative import Decoder, LatentNorm, VAEObjective


def test_the_latent_scaling_settles_to_the_statistics_of_everything_seen():
    norm = LatentNorm(4)
    data = torch.randn(1000, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0.0, 1.0, -2.0, 5.0])
    for batch in data.split(128):
        norm.update(batch)
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, correction=0))
    scaled = norm(data)
    torch.testing.assert_close(scaled.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.inverse(scaled), data, atol=1e-4, rtol=0)


def test_the_denoiser_stage_leaves_the_vae_as_the_first_stage_trained_it():
    net = build_model("latent-diffusion").train()
    pixels, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    VAEObjective(net)(pixels, labels, generator=torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None for p in net.vae.parameters())
    net.zero_grad(set_to_none=True)
    net(pixels, labels).mean().backward()
    assert all(p.grad is None for p in net.vae.parameters())
    assert all(p.grad is not None for p in net.denoiser.parameters())
    assert net.norm.seen.item() == 8  # the denoiser's stage gathers the latents' statistics


def test_the_decoder_draws_pixels_in_the_unit_range():
    net = build_model("latent-diffusion").eval()
    pixels = Decoder(net)(torch.randn(5, 32) * 10)
    assert pixels.shape == (5, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
