"""The GAN's one loss: each net learns from its own terms only."""

import torch
import torch.nn.functional as F

from models import build_model
from models.gan import GANConfig


def gradients(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_one_backward_gives_each_net_the_gradients_of_its_own_loss():
    torch.manual_seed(0)
    net = build_model("cgan", GANConfig(channels=(8, 16)))
    pixels, labels = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    state = torch.random.get_rng_state()
    net(pixels, labels).mean().backward()
    together_g, together_d = gradients(net.generator), gradients(net.discriminator)

    # The same step, each loss on its own: the discriminator's on real and detached fakes, the generator's
    # through the discriminator. Spectral norm's power iteration moves on each call: start both from one state.
    torch.manual_seed(0)
    alone = build_model("cgan", GANConfig(channels=(8, 16)))
    torch.random.set_rng_state(state)
    noise = torch.randn(6, alone.config.noise)
    fake = alone.generator(noise, labels)
    judged = alone.discriminator(torch.cat([pixels, fake.detach()]), torch.cat([labels, labels]))
    real_score, fake_score = judged.chunk(2)
    (F.relu(1 - real_score) + F.relu(1 + fake_score)).mean().backward()
    assert all(p.grad is None for p in alone.generator.parameters())
    d_alone = gradients(alone.discriminator)
    (-alone.discriminator(fake, labels)).mean().backward()
    g_alone = gradients(alone.generator)

    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(together_d, d_alone))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(together_g, g_alone))
    assert all(p.requires_grad for p in net.discriminator.parameters())  # switched back on


def test_the_generator_draws_pixels_in_0_1_for_any_batch():
    net = build_model("cgan", GANConfig()).eval()
    pixels = net.generator(torch.randn(3, 64), torch.tensor([0, 4, 9]))
    assert pixels.shape == (3, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
