"""The generative family on the road: two stages, three graphs with parity, quality judged by the CNN."""

import bentoml
import numpy as np
import onnxruntime as ort
import pytest

from contracts.card import ModelCard
from contracts.sampling import Denoising, cosine_schedule, image_seeds
from training.image_quality import CnnJudge, frechet_distance


def stored(card: dict) -> bentoml.Model:
    return bentoml.models.get(card["tag"])


def session(model: bentoml.Model, file: str) -> ort.InferenceSession:
    return ort.InferenceSession(model.path_of(file), providers=["CPUExecutionProvider"])


def test_the_card_measures_samples_against_the_vae_the_class_means_and_real_data(diffusion_card, cnn_card):
    card = ModelCard.from_metadata(diffusion_card)
    assert card.task == "image-generation" and card.key_metric == "frechet_cnn"
    metrics = card.metrics
    assert metrics["judge"] == cnn_card["tag"] and metrics["samples"] == 200
    for key in ("frechet_cnn", "frechet_cnn_vae", "frechet_cnn_real_halves"):
        assert np.isfinite(metrics[key]) and metrics[key] >= -1e-6
    assert 0.0 <= metrics["cnn_agreement"] <= 1.0
    assert set(card.baseline["class_means"]) == {"frechet_cnn", "cnn_agreement"}
    assert set(metrics["vae_ood"]["sets"]) == {"digits", "photo crops", "noise", "flat"}
    assert card.ood.threshold is None  # a request is a seed and a class: nothing to score
    assert card.extra["pretraining"] and len(card.extra["history"]) == 1  # the VAE first, then the denoiser
    assert set(card.sha256) == {"model.onnx", "decoder.onnx", "vae_score.onnx", "samples.png", "weights.safetensors"}
    assert set(card.extra["companions_parity"]) == {"decoder.onnx", "vae_score.onnx"}


def test_the_stored_graphs_take_any_batch(diffusion_card):
    model = stored(diffusion_card)
    rng = np.random.default_rng(0)
    pixels = session(model, "decoder.onnx").run(None, {"latents": rng.standard_normal((5, 32), dtype=np.float32)})[0]
    assert pixels.shape == (5, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
    (score,) = session(model, "vae_score.onnx").run(None, {"pixels": pixels})
    assert score.shape == (5,) and np.all(score > 0)


def test_a_row_of_the_denoiser_does_not_depend_on_the_rows_beside_it(diffusion_card):
    """Why a seed gives the same image whatever else is in the batch: ONNX Runtime computes each row alike."""
    denoiser = session(stored(diffusion_card), "model.onnx")
    alphas = cosine_schedule(1000)
    mine = Denoising.start(image_seeds(11, 2), np.array([3, 4]), 2.0, 8, alphas, 32)
    theirs = Denoising.start(image_seeds(99, 13), np.arange(13) % 10, 3.0, 20, alphas, 32)
    alone = Denoising.start(image_seeds(11, 2), np.array([3, 4]), 2.0, 8, alphas, 32)

    def run(*states):
        inputs = [s.denoiser_inputs(10) for s in states]
        latents, timesteps, labels = (np.concatenate(parts) for parts in zip(*inputs))
        (noise,) = denoiser.run(None, {"latents": latents, "timesteps": timesteps, "labels": labels})
        start = 0
        for state, (rows, _, _) in zip(states, inputs):
            state.advance(noise[start : start + len(rows)])
            start += len(rows)

    while not mine.finished:
        run(theirs, mine)
        run(alone)
    assert np.array_equal(mine.latents, alone.latents)


def test_the_judge_answers_with_the_cnn_s_penultimate_features(cnn_card):
    judge = CnnJudge.newest()
    assert judge.tag == cnn_card["tag"]
    pixels = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    features, classes = judge.judge(pixels)
    assert features.shape == (7, 128) and classes.shape == (7,)
    graph = ort.InferenceSession(stored(cnn_card).path_of("model.onnx"), providers=["CPUExecutionProvider"])
    logits = graph.run(["logits"], {"pixels": judge.prep.normalize(pixels * 255)})[0]
    assert np.array_equal(classes, logits.argmax(1))


def test_the_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one():
    a = np.random.default_rng(0).normal(size=(2000, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)


def test_the_vae_score_stays_finite_where_the_decoder_is_sure_of_its_pixels(tmp_path):
    """A trained decoder's logits reach the hundreds; ONNX Runtime's own cross-entropy with logits overflowed."""
    import torch

    from contracts.tensors import TensorSpec
    from models import build_model
    from models.generative import VAEScore
    from training.export import export_companion
    from training.tasks.base import Companion

    net = build_model("latent-diffusion").eval()
    with torch.no_grad():
        net.vae.decoder[-1].weight.mul_(1000.0)  # logits in the thousands: sigmoid is exactly 0 or 1 in float32
    pixels = torch.rand(6, 1, 28, 28).round()
    image = TensorSpec("pixels", "FP32", ("batch", 1, 28, 28))
    companion = Companion("vae_score.onnx", VAEScore(net), (image,), "negative_elbo", [(pixels,)], 1e-2)
    path, difference = export_companion(companion, tmp_path)
    (scores,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": pixels.numpy()}
    )
    assert np.all(np.isfinite(scores)) and difference < 1e-2


def test_the_gans_card_measures_its_samples_on_the_same_figures_and_keeps_its_last_epoch(gan_card, cnn_card):
    card = ModelCard.from_metadata(gan_card)
    assert card.task == "image-generation" and card.family == "cgan" and card.key_metric == "frechet_cnn"
    metrics = card.metrics
    assert metrics["judge"] == cnn_card["tag"] and metrics["samples"] == 200
    for key in ("frechet_cnn", "frechet_cnn_real_halves", "class_spread", "class_spread_test"):
        assert np.isfinite(metrics[key]) and metrics[key] >= -1e-6
    assert card.train_config["adam_beta1"] == 0.5 and card.ood.threshold is None
    assert set(card.sha256) == {"model.onnx", "samples.png", "weights.safetensors"}
    generator = session(stored(gan_card), "model.onnx")
    noise = np.random.default_rng(0).standard_normal((5, 64), dtype=np.float32)
    (pixels,) = generator.run(None, {"noise": noise, "labels": np.arange(5, dtype=np.int64)})
    assert pixels.shape == (5, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
