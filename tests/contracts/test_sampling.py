"""The numpy sampler: seeds, schedule and DDIM steps (contracts/sampling.py)."""

import numpy as np

from contracts.sampling import CLEAN_BOUND, Denoising, cosine_schedule, first_noise, guided, image_seeds, sampling_steps

ALPHAS = cosine_schedule(1000)


def test_the_schedule_falls_from_nearly_all_signal_to_nearly_none():
    assert ALPHAS[0] > 0.999 and ALPHAS[-1] < 1e-3
    assert np.all(np.diff(ALPHAS) < 0)


def test_sampling_steps_run_from_the_noisiest_timestep_to_zero():
    steps = sampling_steps(1000, 25)
    assert len(steps) == 25 and steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
    assert list(sampling_steps(1000, 1)) == [0]


def test_each_image_has_its_own_seed_and_noise():
    assert image_seeds(7, 3) == [7, 8, 9]
    noise = first_noise(image_seeds(7, 3), 32)
    assert np.array_equal(noise[1], first_noise([8], 32)[0])
    assert not np.array_equal(noise[0], noise[1])


def test_guidance_one_is_the_conditional_prediction_and_more_pushes_past_it():
    cond, null = np.ones((2, 4)), np.zeros((2, 4))
    assert np.array_equal(guided(cond, null, np.array([1.0, 3.0])), [[1] * 4, [3] * 4])


def linear_denoiser(latents, timesteps, labels):
    """A stand-in whose prediction of each row depends on that row alone."""
    return 0.5 * latents + 0.01 * labels[:, None] + 1e-4 * timesteps[:, None]


def test_a_perfect_noise_prediction_recovers_the_clean_latents_in_one_step():
    clean = np.full((2, 8), 0.3, dtype=np.float32)
    noise = first_noise([1, 2], 8)
    a = ALPHAS[999]
    state = Denoising.start([1, 2], np.array([0, 1]), 1.0, 1, ALPHAS, 8)
    state.steps = np.array([999])
    state.latents = (np.sqrt(a) * clean + np.sqrt(1 - a) * noise).astype(np.float32)
    state.advance(np.concatenate([noise, noise]))
    assert state.finished and np.allclose(state.latents, clean, atol=1e-4)


def test_an_image_is_the_same_alone_and_among_others():
    together = Denoising.start(image_seeds(5, 3), np.array([1, 2, 3]), 2.0, 10, ALPHAS, 16)
    alone = Denoising.start(image_seeds(6, 1), np.array([2]), 2.0, 10, ALPHAS, 16)
    while not together.finished:
        for state in (together, alone):
            state.advance(linear_denoiser(*state.denoiser_inputs(null_label=10)))
    assert alone.finished and np.array_equal(together.latents[1], alone.latents[0])
    assert not np.array_equal(together.latents[0], together.latents[1])


def test_a_wild_noise_prediction_at_the_noisiest_step_cannot_blow_the_latents_up():
    """alpha-bar is ~2e-9 at the first step: the clean estimate is bounded, and the noise made to agree with it."""
    state = Denoising.start([1], np.array([0]), 1.0, 25, ALPHAS, 8)
    wrong = state.latents + 0.05  # a prediction off by 0.05 everywhere
    state.advance(np.concatenate([wrong, wrong]))
    assert np.abs(state.clean).max() <= CLEAN_BOUND and np.abs(state.latents).max() < 3.0
